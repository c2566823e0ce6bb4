"""An exact, seeded k-fold partition of slice indices: every slice is validated exactly once."""

from __future__ import annotations

from typing import Any

import numpy as np


def kfold(n: int, k: int, seed: int) -> dict[str, Any]:
    """Partition ``range(n)`` into ``k`` validation folds whose sizes differ by at most one.

    Returns ``{"seed", "k", "folds": [{"train": [...], "val": [...]}, ...]}`` with sorted indices.

    Raises:
        ValueError: ``k < 2`` or ``k > n``.
    """
    if not 2 <= k <= n:
        raise ValueError(f"split.k: invalid value {k}: must be in [2, {n}] for {n} slices")
    order = np.random.default_rng(seed).permutation(n)
    folds = []
    for val in np.array_split(order, k):
        val_set = set(val.tolist())
        folds.append({"train": [i for i in range(n) if i not in val_set], "val": sorted(val_set)})
    return {"seed": seed, "k": k, "folds": folds}


def check_partition(folds: dict[str, Any], n: int) -> None:
    """Raise ``ValueError`` unless ``folds`` is an exact partition of ``range(n)``."""
    vals = [i for f in folds["folds"] for i in f["val"]]
    if sorted(vals) != list(range(n)):
        raise ValueError(f"folds: validation sets do not partition range({n})")
    for j, f in enumerate(folds["folds"]):
        if set(f["train"]) & set(f["val"]) or sorted(f["train"] + f["val"]) != list(range(n)):
            raise ValueError(f"folds[{j}]: train and val must be disjoint and cover range({n})")
