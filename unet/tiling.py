"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) over whole slices of any size, streamed.

A slice is mirror-padded so that the model's output tiles (388 px for the paper's net) cover it
exactly, its input tiles carry the full context, and the stitched output has the slice's size with
no resizing. Optional dihedral test-time augmentation and model ensembles average probabilities.
Tiles are batched across slices (and transforms), so every batch is full but the last, and only the
slices whose tiles are in the current batch are held in memory. Any object with the model's tile shapes and
``predict_on_batch`` runs it (:class:`TileModel`: a Keras model, or :class:`unet.predict.OnnxModel`), so this
module imports no framework.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


def _dihedral(a: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
    """Element ``k`` of the 8 flips/rotations of the last two axes (or its inverse)."""
    if inverse:
        return np.rot90(a[..., ::-1] if k >= 4 else a, -(k % 4), axes=(-2, -1))
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a


class TileModel(Protocol):
    """What tiling needs of a model: its (batch, tile, tile, 1) -> (batch, out, out, 2) logits shapes and a call."""

    input_shape: Any
    output_shape: Any

    def predict_on_batch(self, x: np.ndarray) -> Any: ...


def tile_geometry(model: TileModel) -> tuple[int, int]:
    """(input side, output side) of a valid-convolution model with square tiles."""
    return int(model.input_shape[1]), int(model.output_shape[1])


@dataclass
class _Slice:
    """A slice in flight: its probability sum over models and transforms, and passes still to finish."""

    acc: np.ndarray  # (H, W) float32
    passes: int


@dataclass
class _Pass:
    """One transform of one slice in flight: its stitched output (ny*out, nx*out) and tiles still to come."""

    owner: _Slice
    k: int
    shape: tuple[int, int]  # the transformed slice's (h, w)
    stitched: np.ndarray
    tiles: int


def iter_predictions(
    model: TileModel,
    slices: Iterable[np.ndarray],
    batch_size: int = 8,
    tta: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the foreground probability (H, W) float32 of each grey slice of ``slices``, in order.

    Slices are raw grey values when the model carries its intensity map (:mod:`unet.intensity`); an
    ensemble is one model (:func:`unet.export.ensemble`). With ``tta``, averages over the 8 dihedral
    transforms. Tiles of
    consecutive slices share batches of ``batch_size``; the last batch is zero-padded to that size (one
    compiled shape). ``slices`` is consumed lazily: memory is bounded by the slices of one batch.
    """
    tile, out = tile_geometry(model)
    transforms = range(8) if tta else range(1)
    batch = np.zeros((batch_size, tile, tile, 1), np.float32)
    owners: list[tuple[_Pass, int, int]] = []  # (pass, y, x) of each tile in the batch
    pending: deque[_Slice] = deque()
    for raw in slices:
        image = np.asarray(raw, np.float32)
        state = _Slice(np.zeros(image.shape, np.float32), len(transforms))
        pending.append(state)
        for k in transforms:
            view = _dihedral(image, k)
            padded, corners = _pad(view, tile, out)
            h, w = view.shape
            stitched = np.empty((math.ceil(h / out) * out, math.ceil(w / out) * out), np.float32)
            p = _Pass(state, k, (h, w), stitched, len(corners))
            for y, x in corners:
                batch[len(owners), ..., 0] = padded[y : y + tile, x : x + tile]
                owners.append((p, y, x))
                if len(owners) == batch_size:
                    _run(model, batch, owners, out)
                    yield from _finished(pending, len(transforms))
    if owners:
        batch[len(owners) :] = 0.0
        _run(model, batch, owners, out)
    yield from _finished(pending, len(transforms))


def _pad(image: np.ndarray, tile: int, out: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Mirror-pad ``image`` so output tiles of side ``out`` cover it; return it and the tile corners."""
    margin = (tile - out) // 2
    h, w = image.shape
    ny, nx = math.ceil(h / out), math.ceil(w / out)
    # symmetric = mirror repeating the edge pixel, as training's augmentation samples (unet.augment);
    # numpy mirrors repeatedly for pads > size
    padded = np.pad(image, ((margin, margin + ny * out - h), (margin, margin + nx * out - w)), mode="symmetric")
    return padded, [(ty * out, tx * out) for ty in range(ny) for tx in range(nx)]


def _run(model: TileModel, batch: np.ndarray, owners: list[tuple[_Pass, int, int]], out: int) -> None:
    """Predict ``batch`` and stitch the probabilities into the tiles' passes."""
    n = len(owners)
    logits = np.asarray(model.predict_on_batch(batch), np.float32)[:n]
    prob = 1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))  # softmax, class 1
    for (p, y, x), t in zip(owners, prob, strict=True):
        p.stitched[y : y + out, x : x + out] = t
        p.tiles -= 1
        if p.tiles == 0:  # the pass is complete: back to the slice's orientation
            h, w = p.shape
            p.owner.acc += _dihedral(p.stitched[:h, :w], p.k, inverse=True)
            p.owner.passes -= 1
    owners.clear()


def _finished(pending: deque[_Slice], passes: int) -> Iterator[np.ndarray]:
    """Pop and yield the leading slices whose every pass is done (tiles run in order, so slices finish in order)."""
    while pending and pending[0].passes == 0:
        yield pending.popleft().acc / np.float32(passes)


def predict_slices(
    model: TileModel, images: Iterable[np.ndarray], batch_size: int = 8, tta: bool = False
) -> np.ndarray:
    """Foreground probability (N, H, W) float32 of grey slices ``images`` (N, H, W), held in memory.

    See :func:`iter_predictions`, which this collects.
    """
    return np.stack(list(iter_predictions(model, images, batch_size, tta)))
