"""evaluate stage: each fold's model on its own validation slices, by overlap-tile inference on whole slices.

Writes ``--metrics`` (``fold<k>`` -> its metrics, so ``dvc metrics diff`` compares fold by fold) and
``--summary`` (mean and std over folds) for ``dvc metrics``, ``--slices`` (one row per slice) and overlay
PNGs for ``dvc plots``. V_rand/V_info/pixel error follow the ISBI 2012 challenge's protocol on each fold's
stack of validation slices; ``*_fixed`` and ``mismatch`` are at ``evaluate.threshold``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

from unet.config import Config
from unet.io import atomic_path, read_stack, to_binary, write_json
from unet.stages import _cli

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, cfg: Config) -> None:
    _cli.start_backend()  # after the arguments are checked, quietly
    from unet.evaluation import evaluate_fold, fold_summary, overlay, write_png
    from unet.metrics import over_folds
    from unet.predict import load_model

    raw = Path(args.raw)
    images = read_stack(raw / cfg.download.images[0])
    labels = to_binary(read_stack(raw / cfg.download.labels))
    folds = json.loads(Path(args.folds).read_text())["folds"]
    models = Path(args.models)
    Path(args.overlays).mkdir(parents=True, exist_ok=True)  # a declared output, empty with evaluate.overlays: 0
    per_fold, rows = {}, []
    for k, fold in enumerate(folds):
        path = models / f"fold{k}" / "model.keras"
        if not path.is_file():
            raise ValueError(f"{path}: no model for fold {k} of {len(folds)} (data/folds.json)")
        model = load_model(path, images.dtype)
        metrics, fold_rows, prob = evaluate_fold(model, images, labels, fold["val"], cfg.evaluate)
        per_fold[k] = fold_summary(k, fold["val"], metrics)
        rows += [{"fold": k, **r} for r in fold_rows]
        for i, s in enumerate(fold["val"][: cfg.evaluate.overlays]):
            write_png(
                Path(args.overlays) / f"fold{k}_slice{s:02d}.png",
                overlay(images[s], labels[s], prob[i], cfg.evaluate.threshold),
            )
        log.info(
            "fold %d: %s",
            k,
            ", ".join(
                f"{m}={per_fold[k][m]:.4f}" for m in ("vrand", "vinfo", "pixel_error", "vrand_fixed", "soft_dice")
            ),
        )
    summary = over_folds(per_fold)
    write_json(args.metrics, {f"fold{k}": m for k, m in per_fold.items()})
    write_json(args.summary, summary)
    with atomic_path(args.slices) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "over %d folds (challenge protocol): vrand %.4f +- %.4f, vinfo %.4f +- %.4f, pixel_error %.4f +- %.4f",
        len(folds),
        *(summary[m][s] for m in ("vrand", "vinfo", "pixel_error") for s in ("mean", "std")),
    )


if __name__ == "__main__":
    p = _cli.parser("evaluate", __doc__)
    p.add_argument("--raw", default="data/raw", help="directory of the stacks (default: %(default)s)")
    p.add_argument("--folds", default="data/folds.json", help="the split stage's folds (default: %(default)s)")
    p.add_argument("--models", default="models/folds", help="directory holding fold<k>/model.keras")
    p.add_argument("--metrics", default="metrics/folds.json", help="per-fold metrics (JSON)")
    p.add_argument("--summary", default="metrics/summary.json", help="mean and std over folds (JSON)")
    p.add_argument("--slices", default="plots/evaluate/slices.csv", help="one row per slice (CSV)")
    p.add_argument("--overlays", default="plots/overlays", help="directory of overlay PNGs")
    _cli.run("evaluate", main, p.parse_args(), outputs=("metrics", "summary", "slices", "overlays"))
