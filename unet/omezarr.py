"""OME-Zarr images in and out, the one owner of the format: NGFF 0.4 (zarr v2) and 0.5 (zarr v3) through
ome-zarr-py on zarr.

Reading takes level 0 of a store's first multiscales image as a stack of z-slices: its space axes are ``z, y, x``
or ``y, x``; a time or channel axis is accepted only with one point (a channel axis of more is colour, refused);
each chunk holds one z-slice (more would make a slice read decode its neighbours too, so memory would grow with
the chunk: rechunk first). Writing streams one z-slice a chunk into a single resolution level (``0``) and has
ome-zarr-py write the multiscales metadata last, with the axes and coordinate transformations of the input. Every
problem with a store is a one-line :class:`StoreError` naming it (a :class:`unet.io.StoreError` when read through
:mod:`unet.io`, which dispatches OME-Zarr stores here).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet.outputs import fsync_dir, fsync_tree

logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # its warnings (version detection) are not the user's

DEFAULT_VERSION = "0.5"  # what ome-zarr-py writes by default; an OME-Zarr input's own version wins
MARK = "unet"  # an attribute beside "ome"/"multiscales" in what unet predict writes: only such a store is replaced
FOREGROUND = {"label-value": 1, "class": "foreground (the training labels' larger value)"}
COLOURS = [{"label-value": 1, "rgba": [255, 0, 0, 255]}]


class StoreError(ValueError):
    """A store that is not a grey OME-Zarr image, or a label that would overwrite one; the message is one line
    naming the store (a ``StoreError`` in :mod:`unet.io`)."""


@dataclass(frozen=True)
class Layout:
    """Level 0 of an OME-Zarr image: NGFF axes, shape, coordinate transformations and version."""

    axes: tuple[dict[str, Any], ...]
    shape: tuple[int, ...]
    transforms: tuple[dict[str, Any], ...]
    version: str

    @property
    def spatial(self) -> list[int]:
        """Indices of the space axes (z, y, x or y, x)."""
        return [i for i, a in enumerate(self.axes) if axis_type(a) == "space"]

    @property
    def chunks(self) -> tuple[int, ...]:
        """One z-slice a chunk: whole y, x planes, 1 along every other axis."""
        plane = self.spatial[-2:]
        return tuple(n if i in plane else 1 for i, n in enumerate(self.shape))

    def index(self, i: int) -> tuple[Any, ...]:
        """The selection of z-slice ``i``."""
        z = self.spatial[0] if len(self.spatial) == 3 else -1
        plane = self.spatial[-2:]
        return tuple(slice(None) if k in plane else (i if k == z else 0) for k in range(len(self.shape)))


def axis_type(axis: dict[str, Any]) -> str | None:
    """An axis's NGFF type; where a store omits it (optional in 0.4), the type its standard name implies."""
    return axis.get("type") or {"x": "space", "y": "space", "z": "space", "c": "channel", "t": "time"}.get(axis["name"])


def plain_layout(slices: int, height: int, width: int) -> Layout:
    """The layout of a stack that is not OME-Zarr: ``z, y, x`` (``y, x`` for one slice), unit scale, no units."""
    names = "zyx" if slices > 1 else "yx"
    shape = (slices, height, width)[3 - len(names) :]
    axes = tuple({"name": n, "type": "space"} for n in names)
    return Layout(axes, shape, ({"type": "scale", "scale": [1.0] * len(names)},), DEFAULT_VERSION)


def open_image(path: str | Path, label: str) -> tuple[Any, Layout]:
    """The level-0 zarr array of the first multiscales image of ``path`` and its layout, checked.

    Raises:
        StoreError: not a zarr store, no multiscales metadata, axes other than (t, c,) (z,) y, x, a time or
            channel axis of more than one point, chunks spanning several z-slices, an empty image, a
            non-numeric dtype.
    """
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    try:
        loc = parse_url(str(path), mode="r")
        if loc is None:
            raise StoreError(f"{label}: not a zarr store (no zarr.json, .zgroup or .zarray)")
        if "multiscales" not in loc.root_attrs:
            raise StoreError(f"{label}: no OME-Zarr multiscales metadata; expected an NGFF 0.4 or 0.5 image")
        node = next(iter(Reader(loc)()))
        spec = next(s for s in node.specs if isinstance(s, Multiscales))
        arr = zarr.open_array(str(Path(path) / spec.datasets[0]), mode="r")
        transforms = (node.metadata.get("coordinateTransformations") or [[]])[0] or []
        # NGFF also allows transformations of the whole multiscales, applied after each level's: folded into
        # level 0's, so what we write keeps the input's physical scale
        top = loc.root_attrs["multiscales"][0].get("coordinateTransformations") or []
        transforms = compose(transforms, top, label)
        layout = Layout(tuple(node.metadata["axes"]), tuple(arr.shape), tuple(transforms), loc.version)
    except StoreError:
        raise
    except Exception as exc:  # zarr and ome-zarr-py raise many types for malformed metadata: one line for all
        raise StoreError(f"{label}: unreadable OME-Zarr metadata ({_first_line(exc)})") from exc
    _check(arr, layout, label)
    return arr, layout


def compose(level: list[dict[str, Any]], top: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The scale (and translation) of ``level``'s transformations followed by ``top``'s, as one scale and one
    translation (none where both have none).

    Raises:
        StoreError: a transformation other than ``identity``, ``scale`` and ``translation`` given as values.
    """
    if not top:
        return list(level)
    scale: list[float] | None = None
    shift: list[float] | None = None
    for t in [*level, *top]:
        kind = t.get("type")
        if kind == "identity":
            continue
        values = t.get(kind) if kind in ("scale", "translation") else None
        if values is None:
            raise StoreError(f"{label}: coordinate transformation {t} is not supported (scale, translation)")
        n = len(values)
        scale, shift = scale or [1.0] * n, shift or [0.0] * n
        if kind == "scale":
            scale = [a * b for a, b in zip(scale, values, strict=True)]
            shift = [a * b for a, b in zip(shift, values, strict=True)]
        else:
            shift = [a + b for a, b in zip(shift, values, strict=True)]
    out: list[dict[str, Any]] = [{"type": "scale", "scale": scale}] if scale else []
    has_shift = any(t.get("type") == "translation" for t in [*level, *top])
    return out + ([{"type": "translation", "translation": shift}] if has_shift and shift else [])


def _check(arr: Any, layout: Layout, label: str) -> None:
    where = f"{label}: image of shape {layout.shape} (axes {','.join(a['name'] for a in layout.axes)})"
    if len(layout.axes) != len(layout.shape):
        raise StoreError(f"{where}: {len(layout.axes)} axes for a {len(layout.shape)}-D array")
    for a, n in zip(layout.axes, layout.shape, strict=True):
        kind = axis_type(a)
        if kind == "channel" and n > 1:
            what = "RGB" if n == 3 else f"{n}-channel"
            raise StoreError(f"{where}: {what} channel axis {a['name']}; expected grey (one channel), convert it first")
        if kind not in ("space", "channel") and n > 1:
            raise StoreError(f"{where}: {kind or 'untyped'} axis {a['name']} of {n} points; expected one")
    if len(layout.spatial) not in (2, 3):
        raise StoreError(f"{where}: {len(layout.spatial)} space axes; expected z, y, x or y, x")
    if 0 in layout.shape:
        raise StoreError(f"{where}: empty image")
    if np.dtype(arr.dtype).kind not in "uif":
        raise StoreError(f"{where}: unsupported dtype {arr.dtype}; expected integer or float grey values")
    z = layout.spatial[0] if len(layout.spatial) == 3 else None
    if z is not None and arr.chunks[z] > 1 and layout.shape[z] > 1:
        raise StoreError(
            f"{where}: chunks {tuple(arr.chunks)} span {arr.chunks[z]} z-slices; expected one z-slice a chunk "
            "(rechunk it to 1 along z)"
        )


def shape(path: str | Path, label: str) -> tuple[int, int, int, np.dtype]:
    """``(slices, height, width, dtype)`` of an OME-Zarr image, from its metadata; the dtype in native order."""
    arr, layout = open_image(path, label)
    return _shape(arr, layout)


def _shape(arr: Any, layout: Layout) -> tuple[int, int, int, np.dtype]:
    sp = layout.spatial
    slices = layout.shape[sp[0]] if len(sp) == 3 else 1
    return slices, layout.shape[sp[-2]], layout.shape[sp[-1]], np.dtype(arr.dtype).newbyteorder("=")


def iter_slices(path: str | Path, label: str) -> Iterator[np.ndarray]:
    """Yield the z-slices of an OME-Zarr image as ``(H, W)`` arrays (native byte order), one chunk decoded at a
    time."""
    arr, layout = open_image(path, label)
    slices, _, _, dtype = _shape(arr, layout)
    for i in range(slices):
        try:
            plane = np.asarray(arr[layout.index(i)]).astype(dtype, copy=False)
        except Exception as exc:  # a codec's own error type for a damaged chunk: one line naming the slice
            raise StoreError(f"{label}: unreadable chunk at z-slice {i} ({_first_line(exc)})") from exc
        yield plane.reshape(plane.shape[-2:])


def layout_of(path: str | Path, label: str) -> Layout:
    """The layout of an OME-Zarr image."""
    return open_image(path, label)[1]


def write(path: str | Path, planes: Iterable[np.ndarray], layout: Layout, dtype: Any, *, labels: bool) -> None:
    """Write ``planes`` (z-slices, in order) as level 0 of a new OME-Zarr image at ``path``; its multiscales
    metadata (and with ``labels`` an NGFF ``image-label`` entry naming value 1 foreground) last."""
    import zarr
    from ome_zarr.format import format_from_version
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    fmt = format_from_version(layout.version)
    group = zarr.open_group(str(path), mode="w-", zarr_format=fmt.zarr_format)
    names = [a["name"] for a in layout.axes]
    dims = names if fmt.zarr_format == 3 else None  # zarr v2 has no dimension names
    arr = group.create_array("0", shape=layout.shape, chunks=layout.chunks, dtype=dtype, dimension_names=dims)
    for i, plane in enumerate(planes):
        arr[layout.index(i)] = plane
    datasets = [{"path": "0", "coordinateTransformations": [dict(t) for t in layout.transforms]}]
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=[dict(a) for a in layout.axes], name=Path(path).name)
    if labels:
        add_metadata(group, {"image-label": {"version": fmt.version, "colors": COLOURS, "properties": [FOREGROUND]}})
    group.attrs[MARK] = {"written_by": "unet predict"}


def ours(path: str | Path) -> bool:
    """Whether ``path`` is an OME-Zarr image that ``unet predict`` wrote and nothing added labels to since:
    the only kind of existing store it replaces."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        return MARK in group.attrs and not (Path(path) / "labels").exists()
    except Exception:  # not a zarr group at all
        return False


def check_new_label(store: str | Path, name: str, label: str) -> None:
    """Refuse, before any work, a ``labels/name`` that the OME-Zarr image ``store`` already has (one that an
    interrupted ``unet predict`` wrote but had not listed yet is replaced).

    Raises:
        StoreError: ``store`` is not a readable OME-Zarr image, or ``labels/name`` is listed or exists.
    """
    open_image(store, label)
    listed = _listed(Path(store) / "labels")
    if name in listed:
        raise StoreError(f"{label}: labels/{name} exists; choose another --label-name (nothing is overwritten)")
    if (Path(store) / "labels" / name).exists() and not _unlisted_ours(Path(store) / "labels" / name):
        raise StoreError(f"{label}: labels/{name} exists (not written by unet predict); choose another --label-name")


def _unlisted_ours(path: Path) -> bool:
    import zarr

    try:
        return MARK in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # not a zarr group: somebody else's
        return False


def add_labels(store: str | Path, name: str, planes: Iterable[np.ndarray], label: str) -> None:
    """Add ``planes`` (0/1 masks) as the NGFF labels image ``labels/name`` of the image ``store``.

    The image's arrays and metadata are not touched. The labels image is written beside the store (its
    temporary folder, which a kill leaves there, never inside the user's store), moved into ``labels/`` by one
    rename that fails rather than replace anything, and only then listed in ``labels/``'s metadata, so readers
    never see a partial one. A rerun after a kill between the rename and the listing replaces that unlisted
    image of ours. Two runs adding labels to one store at once are not supported.
    """
    import zarr
    from ome_zarr.format import format_from_version
    from ome_zarr.writer import add_metadata

    check_new_label(store, name, label)
    layout = layout_of(store, label)
    fmt = format_from_version(layout.version)
    store = Path(store)
    labels_dir, dest = store / "labels", store / "labels" / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{store.name}.{name}.", dir=store.parent))
    try:
        write(tmp / name, planes, layout, np.uint8, labels=True)
        add_metadata(zarr.open_group(str(tmp / name), mode="a"), {"image-label": {"source": {"image": "../../"}}})
        fsync_tree(tmp / name)
        check_new_label(store, name, label)  # still free after the prediction
        if dest.exists():  # an unlisted image of an interrupted run of ours (check_new_label allowed it)
            shutil.rmtree(dest)
        labels_dir.mkdir(exist_ok=True)
        os.rename(tmp / name, dest)  # onto a directory that appeared meanwhile: fails, replaces nothing
        fsync_dir(labels_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(labels_dir), mode="a", zarr_format=fmt.zarr_format)
    add_metadata(group, {"labels": [*_listed(labels_dir), name]}, fmt=fmt)


def _listed(labels_dir: Path) -> list[str]:
    if not labels_dir.is_dir():
        return []
    import zarr
    from ome_zarr.writer import get_metadata

    return list(get_metadata(zarr.open_group(str(labels_dir), mode="r")).get("labels", []))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
