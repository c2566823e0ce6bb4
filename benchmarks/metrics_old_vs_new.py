"""Release notes for the metrics change: the previous V_rand/V_info/pixel error (thinned ground truth, best
threshold per slice and per score) beside the challenge-protocol scores, on the same models' predictions.

    python -m benchmarks.metrics_old_vs_new MODELS_DIR [--old-rev cfc8dc6]

``MODELS_DIR`` holds ``fold<k>/model.keras`` for the folds of ``data/folds.json`` (e.g. a
``benchmarks.cpu_accuracy --work`` directory); the old code is read from git at ``--old-rev``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks._common import write
from unet import config, metrics
from unet.folds import fold_name
from unet.io import read_stack, to_binary
from unet.predict import load_model
from unet.tiling import predict_slices

ROOT = Path(__file__).resolve().parents[1]


def old_metrics(rev: str) -> ModuleType:
    src = subprocess.run(
        ["git", "show", f"{rev}:unet/metrics.py"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    path = Path(tempfile.mkdtemp()) / "old_metrics.py"
    path.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location("old_metrics", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", type=Path)
    p.add_argument("--old-rev", default="cfc8dc6")
    p.add_argument("--name", default="metrics_old_vs_new")
    args = p.parse_args()
    cfg = config.load(ROOT / "params.yaml")
    old = old_metrics(args.old_rev)
    images = read_stack(ROOT / "data" / "raw" / cfg.download.images[0])
    labels = to_binary(read_stack(ROOT / "data" / "raw" / cfg.download.labels))
    folds = json.loads((ROOT / "data" / "folds.json").read_text())["folds"]
    rows = []
    for k, fold in enumerate(folds):
        model = load_model(args.models / fold_name(k) / "model.keras", images.dtype)
        val = fold["val"]
        prob = predict_slices(model, images[val], 16)
        before = [old.slice_metrics(prob[i], labels[s], 0.5) for i, s in enumerate(val)]
        after = metrics.challenge_scores(prob, labels[val])
        fixed = metrics.fixed_scores(prob, labels[val], 0.5)
        row: dict[str, Any] = {"fold": k}
        for m in ("vrand", "vinfo", "pixel_error"):
            row[f"old_{m}"] = float(np.mean([r[m] for r in before]))
            row[f"new_{m}"] = after[m]
        row |= {"new_vrand_fixed": fixed["vrand_fixed"], "new_vrand_threshold": after["vrand_threshold"]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    mean = {"fold": "mean", **{c: float(np.mean([r[c] for r in rows])) for c in rows[0] if c != "fold"}}
    columns = list(rows[0])
    meta = {"models": args.models.name, "old": f"unet/metrics.py at {args.old_rev}", "new": "challenge protocol"}
    write(args.name, [*rows, mean], columns, meta)


if __name__ == "__main__":
    main()
