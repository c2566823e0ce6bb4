"""An exact, seeded k-fold partition of slice indices: every slice is validated exactly once."""

from __future__ import annotations

from typing import Any

import numpy as np


def fold_name(k: int) -> str:
    """Fold ``k``'s name: its directory under ``models/folds`` (dvc.yaml's ``fold${item.fold}``), its
    metrics file, its overlays."""
    return f"fold{k}"


def kfold(n: int, k: int, seed: int, min_slices: int = 1, what: str = "the stack") -> dict[str, Any]:
    """Partition ``range(n)`` into ``k`` validation folds whose sizes differ by at most one.

    Returns ``{"seed", "k", "folds": [{"train": [...], "val": [...]}, ...]}`` with sorted indices.

    Raises:
        ValueError: ``k < 2``, or fewer than ``k * min_slices`` slices (some fold would validate on fewer
            than ``min_slices``); the message names ``what`` holds the slices.
    """
    if k < 2:
        raise ValueError(f"split.folds: invalid value {k} folds: need at least 2")
    if n < k * min_slices:
        raise ValueError(
            f"split.folds: {k} folds of at least {min_slices} validation slice{'s' * (min_slices > 1)} "
            f"(split.min_slices_per_fold) need {k * min_slices} labelled slices; {what} has {n}: "
            f"use fewer folds (at most {max(n // min_slices, 1)}) or add slices"
        )
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
