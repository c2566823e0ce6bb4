"""Where the evaluate stage's results live in the directories ``dvc.yaml`` gives it, and how they are read back.

``dvc metrics show`` draws a table whose rows are files and whose columns are their keys, so the metrics
directory holds one file per fold with the same keys (:data:`unet.metrics.METRICS`) and the cross-validated
estimate as two more rows of the same shape (``mean.json``, ``std.json``: mean and sample std over
folds). What is not a metric (the thresholds the challenge protocol chose, each fold's slices, the overlap
scores at ``evaluate.threshold``) goes to the evaluation report, a plain output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unet.folds import fold_name
from unet.metrics import METRICS, over_folds
from unet.outputs import atomic_path, write_json

MEAN, STD = "mean", "std"  # file names: rows of `dvc metrics show`


def write_metrics(directory: str | Path, per_fold: dict[int, dict[str, Any]]) -> None:
    """Write ``<fold>.json`` for every fold (its :data:`METRICS`), ``mean.json`` and ``std.json`` (over folds)."""
    cv = over_folds(per_fold)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for k, metrics in per_fold.items():
            write_json(tmp / f"{fold_name(k)}.json", {m: metrics[m] for m in METRICS})
        for name, stat in ((MEAN, "mean"), (STD, "std")):
            write_json(tmp / f"{name}.json", {m: cv[m][stat] for m in METRICS})


def read_metrics(directory: str | Path) -> dict[int, dict[str, float]]:
    """Every fold's metrics from a directory :func:`write_metrics` wrote, by fold index."""
    directory = Path(directory)
    per_fold = {}
    for path in directory.glob("fold*.json"):
        index = path.stem.removeprefix("fold")
        if index.isdigit() and path.stem == fold_name(int(index)):
            per_fold[int(index)] = json.loads(path.read_text())
    if not per_fold:
        raise ValueError(f"{directory}: no fold metrics (fold<k>.json) to read: run the evaluate stage first")
    return dict(sorted(per_fold.items()))


def report(per_fold: dict[int, dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The evaluation report: per fold, everything but the metrics (slices, chosen thresholds, overlap)."""
    return {
        "threshold": threshold,
        "folds": {fold_name(k): {m: v for m, v in f.items() if m not in METRICS} for k, f in per_fold.items()},
    }
