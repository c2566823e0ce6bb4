"""Stack I/O: decode grey stacks, check their structure, and write outputs atomically.

A stack is a multi-page TIFF, a directory of single-slice PNG/TIFF files in natural sort order
(``slice_2.png`` before ``slice_10.png``), or an OME-Zarr image (:mod:`unet.omezarr`: a ``.zarr`` directory, or
any directory holding zarr metadata). :func:`read_stack` decodes one whole; :func:`iter_slices` yields
it a slice at a time, so memory does not grow with the stack. Every problem with an input file is a
:class:`DataError` whose message is one line naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from unet import channels
from unet.outputs import atomic_path, overlaps

logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its warnings and errors duplicate ours (DataError)


class DataError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""


SLICE_SUFFIXES = (".tif", ".tiff", ".png")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: ``s2`` < ``s10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def slice_files(path: str | Path, *, name: str | None = None) -> list[Path]:
    """The single-slice images (PNG/TIFF, hidden files skipped) of a directory, in natural sort order."""
    path = Path(path)
    label = name or str(path)
    files = [
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLICE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{label}: directory holds no slice images ({', '.join(SLICE_SUFFIXES)})")
    return sorted(files, key=lambda p: natural_key(p.name))


@dataclass(frozen=True)
class StackInfo:
    """Shape and dtype of a stack, read from the headers without decoding pixels."""

    slices: int
    height: int
    width: int
    dtype: np.dtype


def stack_info(path: str | Path, *, name: str | None = None) -> StackInfo:
    """Slice count, slice size and dtype of a stack (TIFF, slice directory or one PNG) without decoding
    more than one slice."""
    path = Path(path)
    label = name or str(path)
    if is_zarr(path):
        from unet import omezarr

        with _store_errors():
            return StackInfo(*omezarr.shape(path, label))
    if path.is_dir():
        files = slice_files(path, name=label)
        first = _read_file(files[0], f"{label}/{files[0].name}")
        return StackInfo(len(files), first.shape[1], first.shape[2], first.dtype)
    if _is_png(path):
        one = _read_file(path, label)
        return StackInfo(1, one.shape[1], one.shape[2], one.dtype)
    with _open_tiff(path, label) as tif:
        series = tif.series[0]
        n, h, w, _ = _checked(channels.check, tuple(int(n) for n in series.shape), series.axes, label)
        return StackInfo(n, h, w, np.dtype(series.dtype))


def iter_slices(path: str | Path, *, name: str | None = None) -> Iterator[np.ndarray]:
    """Yield a stack's slices as checked ``(H, W)`` arrays, one decoded at a time.

    Raises:
        DataError: as :func:`read_stack`, and slices of a directory that differ in size or dtype.
    """
    path = Path(path)
    label = name or str(path)
    if is_zarr(path):
        from unet import omezarr

        with _store_errors():
            for i, plane in enumerate(omezarr.iter_slices(path, label)):
                yield check_stack(plane, f"{label} z-slice {i}")[0]
        return
    info = stack_info(path, name=label)
    if path.is_dir():
        for f in slice_files(path, name=label):
            arr = _read_file(f, f"{label}/{f.name}")
            if arr.shape[1:] != (info.height, info.width) or arr.dtype != info.dtype:
                raise DataError(
                    f"{label}/{f.name}: slice of {arr.shape[1]}x{arr.shape[2]} {arr.dtype}; "
                    f"the first is {info.height}x{info.width} {info.dtype}"
                )
            yield arr[0]
        return
    if _is_png(path):
        yield _read_file(path, label)[0]
        return
    with _open_tiff(path, label) as tif:
        series = tif.series[0]
        for i, (keys, axes) in enumerate(_pages(series, info.slices)):
            try:
                page = tif.asarray(key=keys, series=0) if keys is not None else tif.asarray(series=0)
            except (ValueError, OSError, IndexError, KeyError) as exc:
                raise DataError(f"{label}: unreadable or truncated TIFF at slice {i} ({_first_line(exc)})") from exc
            yield check_stack(_checked(channels.grey, page, axes, label), f"{label} slice {i}")[0]


def is_zarr(path: str | Path) -> bool:
    """Whether ``path`` is read as OME-Zarr: a directory named ``*.zarr`` (``.ome.zarr``) or holding zarr
    metadata (``zarr.json``, ``.zgroup``, ``.zattrs``); any other directory is a slice folder."""
    path = Path(path)
    markers = ("zarr.json", ".zgroup", ".zattrs", ".zarray")
    return path.is_dir() and (path.suffix.lower() == ".zarr" or any((path / m).is_file() for m in markers))


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """A :class:`unet.omezarr.StoreError` as a :class:`DataError`."""
    from unet.omezarr import StoreError

    try:
        yield
    except StoreError as exc:
        raise DataError(str(exc)) from None


def _pages(series: Any, slices: int) -> Iterator[tuple[Any, str]]:
    """For each slice of a TIFF series, the keys of its pages (``None``: the whole series) and their axes: one
    page a slice, or one page per channel of a slice (ImageJ hyperstacks: a ``C`` axis before the page's)."""
    page_axes = series.keyframe.axes
    lead_axes = series.axes[: len(series.axes) - len(page_axes)]
    lead = tuple(int(n) for n in series.shape[: len(lead_axes)])
    if slices == 1 and prod(lead) == 1:
        yield None, series.axes
        return
    c = lead_axes.find("C") if "C" in lead_axes and lead[lead_axes.index("C")] > 1 else -1
    if c < 0:
        yield from ((i, page_axes) for i in range(slices))
        return
    rest = lead[:c] + lead[c + 1 :]
    for j in range(slices):
        idx = tuple(int(k) for k in np.unravel_index(j, rest)) if rest else ()
        keys = [int(np.ravel_multi_index((*idx[:c], k, *idx[c:]), lead)) for k in range(lead[c])]
        yield keys, "C" + page_axes


def _checked(check: Any, *args: Any) -> Any:
    """``check(*args)`` with a :class:`unet.channels.LayoutError` as a :class:`DataError`."""
    try:
        return check(*args)
    except channels.LayoutError as exc:
        raise DataError(str(exc)) from None


def read_stack(path: str | Path, *, name: str | None = None) -> np.ndarray:
    """Decode a grey-value stack (multi-page TIFF, slice directory or OME-Zarr image) to ``(N, H, W)``
    (one page: ``N = 1``).

    Raises:
        DataError: missing, empty, truncated or non-TIFF/PNG file, colour/multichannel pages, non-numeric
            dtype, non-finite values, or slices of a directory that differ in size or dtype.
    """
    path = Path(path)
    label = name or str(path)
    if path.is_dir():  # a slice folder or an OME-Zarr image
        return check_stack(np.stack(list(iter_slices(path, name=label))), label)
    return _read_file(path, label)


def _read_file(path: Path, label: str) -> np.ndarray:
    """Decode one TIFF (any page count) or PNG file to a checked ``(N, H, W)`` array."""
    with _decoding(path, label):
        if _is_png(path):
            arr = _png(path, label)
            arr = _checked(channels.grey, arr, channels.png_axes(arr), label)
        else:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                arr = _checked(channels.grey, series.asarray(), series.axes, label)
    return check_stack(arr, label)


def _png(path: Path, label: str) -> np.ndarray:
    """A PNG's pixels: grey (8/16-bit), grey+alpha, RGB or RGBA; a palette image through its palette."""
    from PIL import Image

    with Image.open(path) as img:
        mode = img.mode
        if mode in ("P", "PA"):
            return np.asarray(img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB"))
        if mode == "1":
            return np.asarray(img.convert("L"))
        if not mode.startswith(("L", "RGB", "I", "F")):
            raise DataError(f"{label}: PNG of mode {mode}; expected grey, grey+alpha, RGB, RGBA or a palette")
        return np.asarray(img)


@contextlib.contextmanager
def _open_tiff(path: Path, label: str) -> Iterator[tifffile.TiffFile]:
    with _decoding(path, label):
        tif = tifffile.TiffFile(path)
    with tif:
        yield tif


def _is_png(path: Path) -> bool:
    return path.suffix.lower() == ".png"


@contextlib.contextmanager
def _decoding(path: Path, label: str) -> Iterator[None]:
    """A missing or empty file, and whatever the decoder raises inside, as a one-line :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"{label}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{label}: empty file")
    try:
        yield
    except DataError:
        raise
    except tifffile.TiffFileError as exc:
        raise DataError(f"{label}: not a TIFF file ({_first_line(exc)})") from exc
    except (ValueError, OSError, IndexError, KeyError, SyntaxError) as exc:
        kind = "PNG" if _is_png(path) else "TIFF"
        raise DataError(f"{label}: unreadable or truncated {kind} ({_first_line(exc)})") from exc


def check_stack(arr: np.ndarray, label: str) -> np.ndarray:
    """Check that ``arr`` is a finite grey-value stack and return it as ``(N, H, W)``."""
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        kind = "RGB/multichannel" if arr.ndim == 4 and arr.shape[-1] in (3, 4) else f"{arr.ndim}-D"
        raise DataError(f"{label}: {kind} stack of shape {arr.shape}; expected grey pages (N, H, W)")
    if arr.dtype.kind not in "uif":
        raise DataError(f"{label}: unsupported dtype {arr.dtype}; expected integer or float grey values")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(arr))[:, 0]})
        raise DataError(f"{label}: NaN/Inf values in slices {_ranges(bad)}")
    if min(arr.shape) == 0:
        raise DataError(f"{label}: empty stack of shape {arr.shape}")
    return arr


def check_labels(arr: np.ndarray, label: str) -> None:
    """Labels must have exactly two distinct values (background, foreground)."""
    values = np.unique(arr)
    if len(values) != 2:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DataError(f"{label}: labels have {len(values)} distinct values ({shown}); expected exactly 2")


def check_pair(images: np.ndarray, labels: np.ndarray, image_name: str, label_name: str) -> None:
    """Image and label stacks must have the same number of slices and the same slice size."""
    if images.shape != labels.shape:
        raise DataError(f"{label_name}: shape {labels.shape} does not match {image_name} shape {images.shape}")


def to_binary(labels: np.ndarray) -> np.ndarray:
    """Map a two-valued label stack to uint8 {0, 1}, the larger value being foreground (1)."""
    return (labels == labels.max()).astype(np.uint8)


def roundtrip_yaml() -> Any:
    """A ruamel.yaml loader/dumper that keeps comments and this project's layout (for in-place edits)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


def pixel_sha256(arr: np.ndarray) -> str:
    """sha256 of the C-order pixel bytes: independent of the TIFF container."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def check_outputs(outputs: dict[str, str | Path], inputs: dict[str, str | Path]) -> None:
    """Refuse, before any work, an output that would overwrite an input (see :func:`overlaps`).

    Raises:
        DataError: naming the output and the input it overlaps.
    """
    for out_name, out in outputs.items():
        for in_name, src in inputs.items():
            if overlaps(out, src):
                raise DataError(
                    f"{out}: output {out_name} would overwrite the input {in_name} ({src}); choose another path"
                )


def write_stack(path: str | Path, arr: np.ndarray) -> None:
    """Write a stack as an uncompressed multi-page TIFF, atomically."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, photometric="minisblack")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _ranges(idx: list[int]) -> str:
    shown = ", ".join(str(i) for i in idx[:10])
    return shown + (f", ... ({len(idx)} in all)" if len(idx) > 10 else "")
