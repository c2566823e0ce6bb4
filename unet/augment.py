"""Joint image/label augmentation on the device, in ``keras.ops`` only (TensorFlow and JAX).

Every augmentation is one coordinate map from the input tile into the whole slice: a random tile
position, one of the 8 dihedral transforms (flips and 90 degree rotations), and a smooth elastic
displacement (a coarse grid of Gaussian offsets, bicubically upsampled, as in the paper). Coordinates
that leave the slice are mirrored back (edge pixel repeated, as ``unet.tiling`` pads), the paper's
overlap-tile padding. Images are sampled bilinearly, labels and weights nearest-neighbour, so the label
stays aligned with the image. The random parameters are drawn on the host from
``numpy.random.default_rng([seed, step])`` (a few numbers a sample, so a resumed run draws exactly the
same); the per-pixel work runs inside the training step. Only the sampled pixels are converted to float32,
so the whole slices stay in their own dtype (uint8 images and labels) on the device.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from unet.config import AugmentConfig

# (u', v') = M @ (u, v) for the 8 elements of the dihedral group: 4 rotations, then the same transposed
_DIHEDRAL = np.array(
    [
        [[1, 0], [0, 1]],
        [[0, -1], [1, 0]],
        [[-1, 0], [0, -1]],
        [[0, 1], [-1, 0]],
        [[0, 1], [1, 0]],
        [[1, 0], [0, -1]],
        [[0, -1], [-1, 0]],
        [[-1, 0], [0, 1]],
    ],
    np.float32,
)


def draw_params(
    rng: np.random.Generator, batch: int, cfg: AugmentConfig, slice_hw: tuple[int, int], tile: int, out: int
) -> dict[str, np.ndarray]:
    """Random parameters for ``batch`` samples; float32 arrays except ``dihedral`` (int32).

    The label tile's corner is uniform over one period (2 x side) of the slice's mirror extension, so the
    tile may extend past the slice into its mirror image: every pixel of the slice, border rows
    included, is equally likely to fall in a label tile.
    """
    margin = (tile - out) // 2
    tops = [rng.integers(0, 2 * s, size=batch) for s in slice_hw]
    # centre of the input tile in slice coordinates (half-integers for even tiles keep pixels on the grid)
    center = np.stack(tops, -1).astype(np.float32) - margin + (tile - 1) / 2
    g = cfg.elastic_grid
    return {
        "center": center,
        "dihedral": (rng.integers(0, 8, size=batch) if cfg.flip_rotate else np.zeros(batch)).astype(np.int32),
        "grid": rng.normal(0.0, cfg.elastic_sigma, size=(batch, g, g, 2)).astype(np.float32),
        "brightness": rng.uniform(-cfg.brightness, cfg.brightness, size=batch).astype(np.float32),
        "contrast": rng.uniform(-cfg.contrast, cfg.contrast, size=batch).astype(np.float32),
    }


def _reflect(c: Any, size: int) -> Any:
    """Mirror coordinates into [0, size - 1], repeating the edge pixel (``numpy.pad(mode='symmetric')``).

    The extension has period ``2 * size`` and holds every pixel exactly twice per period, which is what
    makes uniformly placed tiles cover every pixel equally (:func:`draw_params`).
    """
    c = ops.mod(c + 0.5, 2.0 * size) - 0.5
    c = ops.where(c > size - 0.5, 2.0 * size - 1.0 - c, c)
    # within half a pixel of the border the symmetric extension is flat: clamping is exact for both
    # nearest and bilinear sampling
    return ops.clip(c, 0.0, size - 1.0)


def cubic_upsampler(n: int, size: int) -> np.ndarray:
    """(size, n) matrix that resamples n grid values to size points by cubic convolution (Keys, a = -0.5),
    half-pixel centres and replicated edges: what a bicubic image resize does, as a matmul XLA compiles.
    """
    s = (np.arange(size) + 0.5) * n / size - 0.5
    base = np.floor(s).astype(int)
    m = np.zeros((size, n), np.float32)
    for off in range(-1, 3):
        d = np.abs(s - (base + off))
        w = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, np.where(d < 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, 0.0))
        np.add.at(m, (np.arange(size), np.clip(base + off, 0, n - 1)), w)
    return m


def sample_coords(params: dict[str, Any], tile: int, slice_hw: tuple[int, int]) -> tuple[Any, Any]:
    """Slice coordinates ``(y, x)``, each ``(B, tile, tile)`` float32, of every input-tile pixel."""
    r = ops.arange(tile, dtype="float32") - (tile - 1) / 2
    u, v = ops.meshgrid(r, r, indexing="ij")  # (tile, tile) row/column offsets from the centre
    m = ops.take(ops.convert_to_tensor(_DIHEDRAL), params["dihedral"], axis=0)  # (B, 2, 2)
    m = ops.cast(m, "float32")
    uu = m[:, 0, 0, None, None] * u + m[:, 0, 1, None, None] * v
    vv = m[:, 1, 0, None, None] * u + m[:, 1, 1, None, None] * v
    a = ops.convert_to_tensor(cubic_upsampler(params["grid"].shape[1], tile))  # (tile, g)
    disp = ops.einsum("ip,bpqc,jq->bijc", a, params["grid"], a)  # (B, tile, tile, 2) smooth field
    y = params["center"][:, 0, None, None] + uu + disp[..., 0]
    x = params["center"][:, 1, None, None] + vv + disp[..., 1]
    return _reflect(y, slice_hw[0]), _reflect(x, slice_hw[1])


def _gather(flat: Any, y: Any, x: Any, width: int) -> Any:
    """``flat`` (B, H*W) of any dtype; integer-valued float coordinates (B, h, w) -> float32 values (B, h, w).

    The cast follows the gather, so only the sampled pixels are converted, never whole slices.
    """
    idx = ops.cast(y, "int32") * width + ops.cast(x, "int32")
    shape = ops.shape(y)
    values = ops.take_along_axis(flat, ops.reshape(idx, (shape[0], -1)), axis=1)
    return ops.reshape(ops.cast(values, "float32"), shape)


def bilinear(stack: Any, y: Any, x: Any) -> Any:
    """Sample ``stack`` (B, H, W) at float coordinates (B, h, w), bilinearly; uint8 is scaled to [0, 1]."""
    h, w = stack.shape[1], stack.shape[2]
    flat = ops.reshape(stack, (ops.shape(stack)[0], h * w))
    grey = keras.backend.standardize_dtype(stack.dtype) == "uint8"

    def at(yy: Any, xx: Any) -> Any:
        v = _gather(flat, yy, xx, w)
        return v / 255.0 if grey else v  # each pixel scaled before blending, as when the whole slice was

    y0, x0 = ops.floor(y), ops.floor(x)
    wy, wx = y - y0, x - x0
    y1, x1 = ops.minimum(y0 + 1, h - 1), ops.minimum(x0 + 1, w - 1)
    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def nearest(stack: Any, y: Any, x: Any) -> Any:
    """Sample ``stack`` (B, H, W) at float coordinates (B, h, w), nearest-neighbour, as float32 (unscaled)."""
    h, w = stack.shape[1], stack.shape[2]
    return _gather(ops.reshape(stack, (ops.shape(stack)[0], h * w)), ops.round(y), ops.round(x), w)


def augment(batch: dict[str, Any], tile: int, out: int) -> tuple[Any, Any, Any]:
    """Cut augmented training tiles from whole slices.

    Args:
        batch: ``image`` (B, H, W) uint8 or float in [0, 1]; ``label`` (B, H, W) in {0, 1}; ``weight``
            (B, H, W) float32 or absent; and the parameters of :func:`draw_params`.
        tile: input tile side. out: output tile side (the label tile is the input tile's centre).

    Returns:
        image tile (B, tile, tile, 1) float32 in [0, 1], label tile (B, out, out) float32, weight tile
        (B, out, out) float32 (ones when ``weight`` is absent).
    """
    hw = (batch["image"].shape[1], batch["image"].shape[2])
    y, x = sample_coords(batch, tile, hw)
    img = bilinear(batch["image"], y, x)
    mid = ops.mean(img, axis=(1, 2), keepdims=True)
    img = (img - mid) * (1 + batch["contrast"][:, None, None]) + mid + batch["brightness"][:, None, None]
    img = ops.clip(img, 0.0, 1.0)
    m = (tile - out) // 2
    yc, xc = y[:, m : m + out, m : m + out], x[:, m : m + out, m : m + out]
    label = nearest(batch["label"], yc, xc)
    weight = nearest(batch["weight"], yc, xc) if "weight" in batch else ops.ones_like(label)
    return img[..., None], label, weight
