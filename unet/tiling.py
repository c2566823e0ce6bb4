"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) over whole slices of any size.

A slice is mirror-padded so that the model's output tiles (388 px for the paper's net) cover it
exactly, its input tiles carry the full context, and the stitched output has the slice's size with
no resizing. Optional dihedral test-time augmentation and model ensembles average probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np


def _dihedral(a: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
    """Element ``k`` of the 8 flips/rotations of the last two axes (or its inverse)."""
    if inverse:
        return np.rot90(a[..., ::-1] if k >= 4 else a, -(k % 4), axes=(-2, -1))
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a


def tile_geometry(model: keras.Model) -> tuple[int, int]:
    """(input side, output side) of a valid-convolution model with square tiles."""
    return int(model.input_shape[1]), int(model.output_shape[1])


def predict_slices(
    models: Sequence[keras.Model],
    images: np.ndarray,
    batch_size: int = 8,
    tta: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """Foreground probability (N, H, W) float32 for grey slices ``images`` (N, H, W) scaled to [0, 1].

    Averages over ``models`` (an ensemble) and, with ``tta``, over the 8 dihedral transforms.
    ``progress`` is called with the number of slices finished after each slice-transform pass.
    """
    images = np.asarray(images, np.float32)
    acc = np.zeros(images.shape, np.float64)
    transforms = range(8) if tta else range(1)
    for model in models:
        for k in transforms:
            for i, image in enumerate(images):
                view = np.ascontiguousarray(_dihedral(image, k))
                acc[i] += _dihedral(predict_slice(model, view, batch_size), k, inverse=True)
                if progress:
                    progress(1)
    return (acc / (len(models) * len(transforms))).astype(np.float32)


def predict_slice(model: keras.Model, image: np.ndarray, batch_size: int) -> np.ndarray:
    """Foreground probability (H, W) of one slice by overlap-tile inference with one model."""
    tile, out = tile_geometry(model)
    margin = (tile - out) // 2
    h, w = image.shape
    ny, nx = math.ceil(h / out), math.ceil(w / out)
    # symmetric = mirror repeating the edge pixel, as training's augmentation samples (unet.augment);
    # numpy mirrors repeatedly for pads > size
    padded = np.pad(image, ((margin, margin + ny * out - h), (margin, margin + nx * out - w)), mode="symmetric")
    corners = [(ty * out, tx * out) for ty in range(ny) for tx in range(nx)]
    result = np.empty((ny * out, nx * out), np.float32)
    for start in range(0, len(corners), batch_size):
        chunk = corners[start : start + batch_size]
        batch = np.zeros((batch_size, tile, tile, 1), np.float32)  # always full: one compiled shape
        for j, (y, x) in enumerate(chunk):
            batch[j, ..., 0] = padded[y : y + tile, x : x + tile]
        logits = np.asarray(model.predict_on_batch(batch), np.float32)[: len(chunk)]
        prob = 1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))  # softmax, class 1
        for (y, x), p in zip(chunk, prob, strict=True):
            result[y : y + out, x : x + out] = p
    return result[:h, :w]
