"""Evaluate fold models on their own validation slices: metrics per slice, per fold and over folds,
plus overlay images (image | label | prediction | errors) for ``dvc plots``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image

from unet.config import EvaluateConfig
from unet.io import atomic_path
from unet.metrics import stack_metrics
from unet.tiling import predict_slices

log = logging.getLogger(__name__)


def evaluate_fold(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, slices: Sequence[int], cfg: EvaluateConfig
) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """Metrics of ``model`` (which maps raw grey values itself, :mod:`unet.intensity`) on ``images[slices]``:
    the fold's (challenge protocol on the fold's stack, plus fixed-threshold scores), one row per slice, and
    the probabilities."""
    prob = predict_slices([model], (images[s] for s in slices), cfg.batch_size, cfg.tta)
    fold, rows = stack_metrics(prob, labels[list(slices)], cfg.threshold)
    return fold, [{"slice": int(s), **r} for s, r in zip(slices, rows, strict=True)], prob


def overlay(image: np.ndarray, labels: np.ndarray, prob: np.ndarray, threshold: float) -> np.ndarray:
    """RGB strip: image | label | prediction | errors (false interior red, missed interior blue)."""
    lo, hi = float(image.min()), float(image.max())  # display contrast only
    grey = ((image - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8) if image.dtype != np.uint8 else image
    pred = prob > threshold
    err = np.stack([grey // 2] * 3, -1)
    err[pred & (labels == 0)] = (255, 0, 0)
    err[~pred & (labels == 1)] = (0, 80, 255)
    panels = [np.stack([g] * 3, -1) for g in (grey, labels * 255, (prob * 255).astype(np.uint8))] + [err]
    gap = np.full((grey.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1).astype(np.uint8)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def fold_summary(fold: int, slices: Sequence[int], metrics: dict[str, Any]) -> dict[str, Any]:
    return {"fold": fold, "slices": [int(s) for s in slices], **metrics}
