"""Stack I/O: decode multi-page TIFFs with tifffile, check their structure, and write outputs atomically.

Every problem with an input file is a :class:`DataError` whose message is one line naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

logging.getLogger("tifffile").setLevel(logging.ERROR)  # its warnings duplicate the exception we raise


class DataError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""


def read_stack(path: str | Path, *, name: str | None = None) -> np.ndarray:
    """Decode a grey-value TIFF stack to an ``(N, H, W)`` array (a single page gives ``N = 1``).

    Raises:
        DataError: empty, truncated or non-TIFF file, colour/multichannel pages, non-numeric dtype,
            or non-finite values.
    """
    path = Path(path)
    label = name or str(path)
    if not path.is_file():
        raise DataError(f"{label}: no such file")
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{label}: empty file")
        arr = tifffile.imread(path)
    except DataError:
        raise
    except tifffile.TiffFileError as exc:
        raise DataError(f"{label}: not a TIFF file ({_first_line(exc)})") from exc
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise DataError(f"{label}: unreadable or truncated TIFF ({_first_line(exc)})") from exc
    return check_stack(arr, label)


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


def to_unit(images: np.ndarray) -> np.ndarray:
    """Grey values as float32 in [0, 1]: uint8 / 255, any other dtype min-max scaled over the stack."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    lo, hi = float(images.min()), float(images.max())
    return ((images - lo) / max(hi - lo, 1e-12)).astype(np.float32)


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


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest`` (file or directory) that becomes ``dest`` only on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent)) / dest.name
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


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
