"""evaluate stage: each fold's model on its own validation slices, by overlap-tile inference on whole slices.

Writes the ``--metrics`` directory (one file per fold and the mean and std over folds, :mod:`unet.results`),
the ``--report`` (each fold's slices, the thresholds the challenge protocol chose, the overlap scores),
``--slices`` (one row per slice), ``--curves`` (every fold's training curves in one table, so that
``dvc plots`` draws the folds together) and overlay PNGs. V_rand/V_info/pixel error follow the ISBI 2012
challenge's protocol on each fold's stack of validation slices; ``*_fixed`` are at ``evaluate.threshold``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

from unet.config import Config
from unet.folds import fold_name
from unet.io import read_stack, to_binary
from unet.metrics import METRICS, over_folds
from unet.outputs import atomic_path, write_json
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    _cli.start_backend()  # after the arguments are checked, quietly
    from unet.evaluation import evaluate_fold, overlay, training_curves, write_png
    from unet.predict import load_model
    from unet.results import report, write_metrics

    raw = Path(args.raw)
    images = read_stack(raw / cfg.download.images[0])
    labels = to_binary(read_stack(raw / cfg.download.labels))
    folds = json.loads(Path(args.folds).read_text())["folds"]
    models = Path(args.models)
    per_fold, rows = {}, []
    with atomic_path(args.overlays) as overlays:
        overlays.mkdir()  # a declared output, empty with evaluate.overlays: 0
        for k, fold in enumerate(folds):
            path = models / fold_name(k) / "model.keras"
            if not path.is_file():
                raise ValueError(f"{path}: no model for fold {k} of {len(folds)} (data/folds.json)")
            model = load_model(path, images.dtype)
            metrics, fold_rows, prob = evaluate_fold(model, images, labels, fold["val"], cfg.evaluate)
            per_fold[k] = {"slices": [int(s) for s in fold["val"]], **metrics}
            rows += [{"fold": k, **r} for r in fold_rows]
            for i, s in enumerate(fold["val"][: cfg.evaluate.overlays]):
                strip = overlay(images[s], labels[s], prob[i], cfg.evaluate.threshold, cfg.register.foreground)
                write_png(overlays / f"{fold_name(k)}_slice{s:02d}.png", strip)
            log.info("fold %d: %s", k, ", ".join(f"{m}={per_fold[k][m]:.4f}" for m in METRICS))
    write_metrics(args.metrics, per_fold)
    write_json(args.report, report(per_fold, cfg.evaluate.threshold))
    write_csv(args.slices, rows)
    write_csv(args.curves, training_curves({k: models / fold_name(k) for k in per_fold}))
    summary = over_folds(per_fold)
    log.info(
        "over %d folds (challenge protocol): vrand %.4f +- %.4f, vinfo %.4f +- %.4f, pixel_error %.4f +- %.4f",
        len(folds),
        *(summary[m][s] for m in ("vrand", "vinfo", "pixel_error") for s in ("mean", "std")),
    )
    log.info("metrics in %s/ (dvc metrics show); plots: dvc plots show", args.metrics)


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    p = _cli.parser("evaluate", __doc__)
    p.add_argument("--raw", required=True, help="directory of the stacks")
    p.add_argument("--folds", required=True, help="the split stage's folds")
    p.add_argument("--models", required=True, help="directory holding fold<k>/model.keras and plots/")
    p.add_argument("--metrics", required=True, help="directory of the metrics: fold<k>.json, mean.json, std.json")
    p.add_argument("--report", required=True, help="slices, thresholds, overlap per fold")
    p.add_argument("--slices", required=True, help="one row per slice (CSV)")
    p.add_argument("--curves", required=True, help="every fold's training curves (CSV)")
    p.add_argument("--overlays", required=True, help="directory of overlay PNGs")
    outputs = ("metrics", "report", "slices", "curves", "overlays")
    _cli.run("evaluate", main, p.parse_args(), outputs=outputs)
