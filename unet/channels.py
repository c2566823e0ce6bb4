"""Grey slices from whatever channel layout a PNG or a TIFF holds, by one rule for every reader.

The rule: an image with one channel is grey. Grey + alpha, RGB and RGBA pixels (a grey slice that a viewer or
exporter saved in colour) are read as grey when their colour channels are equal at every pixel and their alpha,
if any, is the same everywhere (no transparency); channels stored as pages of their own (2 to 4) are read as
grey when they are all equal; any other image is refused, in one line naming the file, its shape and its axes.
Axes are tifffile's letters: ``Y`` and ``X`` are the slice, ``S`` (the samples of a pixel: RGB, grey + alpha)
and ``C`` (channels, one page each, as ImageJ hyperstacks store them) are channels, and every other axis
(``Z``, ``T``, ``I``, ``Q``, ...) numbers slices. A TIFF's own tags decide: a 3- or 4-page stack written
without ``photometric="minisblack"`` is tagged RGB(A) by tifffile, and read as one colour image.
"""

from __future__ import annotations

from math import prod

import numpy as np

CHANNEL_AXES = "SC"
KINDS = {2: "grey+alpha", 3: "RGB", 4: "RGBA"}


class LayoutError(ValueError):
    """A layout that is not grey by the rule; the message is one line naming the file (a ``DataError`` in
    :mod:`unet.io`)."""


def check(shape: tuple[int, ...], axes: str, label: str) -> tuple[int, int, int, int]:
    """``(slices, height, width, channels)`` of an image or stack, or :class:`LayoutError`."""
    where = f"{label}: image of shape {tuple(shape)} (axes {axes})"
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise LayoutError(f"{where}: no Y and X axes; expected grey slices")
    channels = [n for a, n in zip(axes, shape, strict=True) if a in CHANNEL_AXES and n > 1]
    if len(channels) > 1:
        raise LayoutError(f"{where}: {len(channels)} channel axes; expected grey slices")
    c = channels[0] if channels else 1
    if c > 4:
        raise LayoutError(f"{where}: {c} channels; expected grey, grey+alpha, RGB or RGBA")
    pages = prod(n for a, n in zip(axes, shape, strict=True) if a not in "YX" + CHANNEL_AXES)
    return pages, shape[axes.index("Y")], shape[axes.index("X")], c


def grey(arr: np.ndarray, axes: str, label: str) -> np.ndarray:
    """``arr`` (with tifffile ``axes``) as ``(N, H, W)`` grey slices by the module's rule, or :class:`LayoutError`."""
    n, h, w, c = check(arr.shape, axes, label)
    slices = [i for i, a in enumerate(axes) if a not in "YX" + CHANNEL_AXES]
    chans = [i for i, a in enumerate(axes) if a in CHANNEL_AXES]
    planes = np.transpose(arr, [*slices, *chans, axes.index("Y"), axes.index("X")]).reshape(n, c, h, w)
    if c == 1:
        return planes[:, 0]
    samples = "S" in [axes[i] for i in chans]  # pixels of grey+alpha, RGB or RGBA; else channel pages
    kind = f"{label}: {KINDS[c] if samples else f'{c}-channel'} image of shape {arr.shape} (axes {axes})"
    colour = planes[:, : (3 if c >= 3 else 1) if samples else c]
    if any(not np.array_equal(colour[:, 0], colour[:, k]) for k in range(1, colour.shape[1])):
        raise LayoutError(f"{kind}: its colour channels differ; convert it to grey (one channel) first")
    if samples and c in (2, 4) and planes[:, -1].min() != planes[:, -1].max():
        raise LayoutError(f"{kind}: its alpha channel is not uniform (transparency); flatten it to grey first")
    return np.ascontiguousarray(planes[:, 0])


def png_axes(arr: np.ndarray) -> str:
    """The axes of a decoded PNG: ``YX`` for grey, ``YXS`` for grey+alpha, RGB and RGBA."""
    return "YX" if arr.ndim == 2 else "YXS"
