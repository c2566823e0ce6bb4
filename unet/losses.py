"""Losses in float32: softmax cross-entropy (optionally weighted by the paper's border weight map) + soft Dice.

The soft Dice is NVIDIA's formula (UNet Medical): per sample and class, (2 sum(p t) + eps) /
(sum(p^2) + sum(t^2) + eps) with eps = 1e-6, averaged over both classes and the batch.
The weight map (Ronneberger et al. 2015, eq. 2) is computed once per slice on the host from its labels.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from scipy import ndimage

EPS = 1e-6


def soft_dice(logits: Any, labels: Any) -> Any:
    """NVIDIA's soft Dice per sample, ``(B,)``: logits (B, h, w, 2), labels (B, h, w) in {0, 1}."""
    p = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    t = ops.one_hot(ops.cast(labels, "int32"), 2)
    inter = ops.sum(p * t, axis=(1, 2))
    union = ops.sum(p * p + t * t, axis=(1, 2))
    return ops.mean((2.0 * inter + EPS) / (union + EPS), axis=-1)


@keras.saving.register_keras_serializable(package="unet")
class SegmentationLoss(keras.losses.Loss):
    """Per-sample weighted cross-entropy + ``dice_weight`` x (1 - soft Dice).

    ``y_true`` packs the label and the pixel weight: (B, h, w, 2); ``y_pred`` is logits (B, h, w, 2).
    """

    def __init__(self, dice_weight: float = 1.0, name: str = "segmentation_loss", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "float32")
        labels, weights = y_true[..., 0], y_true[..., 1]
        logp = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        ce = -ops.sum(logp * ops.one_hot(ops.cast(labels, "int32"), 2), axis=-1)
        ce = ops.mean(weights * ce, axis=(1, 2))
        return ce + self.dice_weight * (1.0 - soft_dice(y_pred, labels))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dice_weight": self.dice_weight}


@keras.saving.register_keras_serializable(package="unet")
class SoftDice(keras.metrics.Mean):
    """Running mean of NVIDIA's soft Dice; ``y_true`` packed as in :class:`SegmentationLoss`."""

    def __init__(self, name: str = "soft_dice", **kwargs: Any):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        return super().update_state(soft_dice(y_pred, y_true[..., 0]))


def border_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The paper's weight map ``w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` for one slice.

    ``labels`` is (H, W) in {0, 1} with 1 = cell interior. ``w_c`` balances the class frequencies
    (mean 1); ``d1``/``d2`` are the distances to the nearest and second-nearest cell, applied on
    border (0) pixels. Distances are computed in a window of ``5 sigma`` around each cell, beyond which
    the border term is below ``w0 * 1e-5``.
    """
    labels = labels.astype(bool)
    freq = labels.mean()
    wc = np.where(labels, 0.5 / max(freq, 1e-6), 0.5 / max(1 - freq, 1e-6)).astype(np.float32)
    cells, _ = ndimage.label(labels)
    r = int(np.ceil(5 * sigma))
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for i, sl in enumerate(ndimage.find_objects(cells), start=1):
        win = tuple(slice(max(s.start - r, 0), s.stop + r) for s in sl)
        d = ndimage.distance_transform_edt(cells[win] != i).astype(np.float32)
        a, b = d1[win], d2[win]
        d2[win] = np.where(d < a, a, np.minimum(b, d))
        d1[win] = np.minimum(a, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return (wc + np.where(labels, 0.0, np.nan_to_num(border, nan=0.0, posinf=0.0))).astype(np.float32)
