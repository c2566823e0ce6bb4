"""Evaluate fold models on their own validation slices: metrics per slice, per fold and over folds,
plus overlay images (image | label | prediction | errors) for ``dvc plots``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unet.config import EvaluateConfig
from unet.metrics import stack_metrics
from unet.outputs import atomic_path
from unet.tiling import predict_slices

log = logging.getLogger(__name__)


def evaluate_fold(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, slices: Sequence[int], cfg: EvaluateConfig
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Metrics of ``model`` (which maps raw grey values itself, :mod:`unet.intensity`) on ``images[slices]``:
    the fold's (challenge protocol on the fold's stack, plus fixed-threshold scores), one row per slice, and
    the probabilities."""
    prob = predict_slices(model, (images[s] for s in slices), cfg.batch_size, cfg.tta)
    fold, rows = stack_metrics(prob, labels[list(slices)], cfg.threshold)
    return fold, [{"slice": int(s), **r} for s, r in zip(slices, rows, strict=True)], prob


FALSE_POSITIVE, FALSE_NEGATIVE = (230, 0, 0), (0, 90, 255)
PANEL = 510  # px: a 2 x 2 grid of panels and its legend stay within 1024 px, the width of most screens


def overlay(image: np.ndarray, labels: np.ndarray, prob: np.ndarray, threshold: float, foreground: str) -> np.ndarray:
    """RGB 2 x 2 grid with titles and a colour legend: image, label, probability, and the errors at
    ``threshold`` (predicted ``foreground`` where the label has none in red, missed ``foreground`` in blue);
    slices wider than :data:`PANEL` px are scaled down to it."""
    lo, hi = float(image.min()), float(image.max())  # display contrast only
    grey = ((image - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8) if image.dtype != np.uint8 else image
    pred = prob > threshold
    err = np.stack([grey // 2] * 3, -1)
    err[pred & (labels == 0)] = FALSE_POSITIVE
    err[~pred & (labels == 1)] = FALSE_NEGATIVE
    panels = [np.stack([g] * 3, -1) for g in (grey, labels * 255, (prob * 255).astype(np.uint8))] + [err]
    titles = ["image", f"label (white: {foreground})", f"probability of {foreground}", f"errors at {threshold:g}"]
    scale = min(1.0, PANEL / max(grey.shape))
    size = (max(round(grey.shape[1] * scale), 1), max(round(grey.shape[0] * scale), 1))
    tiles = [Image.fromarray(p.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR) for p in panels]
    font, band, gap = ImageFont.load_default(size=13), 18, 4
    w, h = size[0] * 2 + gap, (size[1] + band) * 2 + band * 2
    out = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (tile, title) in enumerate(zip(tiles, titles, strict=True)):
        x, y = (i % 2) * (size[0] + gap), (i // 2) * (size[1] + band)
        draw.text((x + 2, y + 2), title, fill=(0, 0, 0), font=font)
        out.paste(tile, (x, y + band))
    y = (size[1] + band) * 2 + 3
    for x, colour, text in (
        (2, FALSE_POSITIVE, f"{foreground} predicted, not labelled"),
        (w // 2, FALSE_NEGATIVE, f"{foreground} missed"),
    ):
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=colour)
        draw.text((x + 18, y + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(out)


def training_curves(fold_dirs: dict[int, Path]) -> list[dict[str, Any]]:
    """Every fold's training curves (DVCLive's ``plots/metrics/<name>.tsv`` under each fold's directory) as one
    long table: a row per fold and step with ``loss`` and ``soft_dice``, so one chart per curve shows all folds.
    Throughput (``img_per_s``) is not a training curve and stays in each fold's own plots."""
    rows = []
    for k, directory in fold_dirs.items():
        curves = {}
        for name in ("loss", "soft_dice"):
            path = directory / "plots" / "metrics" / f"{name}.tsv"
            if path.is_file():
                with open(path, newline="") as f:
                    curves[name] = {int(r["step"]): float(r[name]) for r in csv.DictReader(f, delimiter="\t")}
        steps = sorted({s for c in curves.values() for s in c})
        rows += [{"fold": k, "step": s, **{n: c.get(s) for n, c in curves.items()}} for s in steps]
    return rows


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
