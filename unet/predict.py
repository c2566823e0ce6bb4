"""``unet predict``: a grey stack of any size to probability maps or masks, streamed page by page.

Slices are decoded one at a time (:func:`unet.io.iter_slices`), their tiles batched across slices through
the model or ensemble (:func:`unet.tiling.iter_predictions`), and each result appended to the output TIFF, or
written as one chunk of the output OME-Zarr image (:mod:`unet.omezarr`), as soon as it is complete, so memory
does not grow with the number of slices. The output appears only when every slice is written (temporary file
or directory, then rename). The engine is Keras (either backend) or ONNX Runtime
(:class:`OnnxModel`), whose path imports neither Keras, TensorFlow nor JAX.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import tifffile

from unet import omezarr
from unet.io import DataError, StackInfo, is_zarr, iter_slices, stack_info
from unet.outputs import atomic_path
from unet.tiling import TileModel, iter_predictions

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

BIGTIFF_ABOVE = 2**32 - 2**25  # classic TIFF offsets are 32-bit; keep room for the page directories


def load_model(path: str | Path, dtype: np.dtype) -> keras.Model:
    """A 1-channel-in, 2-class-out segmentation model taking raw grey values of ``dtype``.

    A model saved without an intensity map (before maps were stored) is taken as trained on uint8 ``x / 255``.

    Raises:
        DataError: no such file, not a Keras model, not a segmentation model, or a model without an
            intensity map for a stack that is not uint8.
    """
    from unet.export import load
    from unet.intensity import UINT8, intensities, with_intensity

    model = load(path)
    maps = intensities(model)
    if not maps:
        if dtype != np.uint8:
            raise DataError(f"{path}: model stores no intensity map (saved before maps were), so it reads only uint8")
        log.warning("%s: model stores no intensity map: taking it as trained on uint8 x/255", path)
        return with_intensity(model, UINT8)
    for m in maps:
        if m.source != str(dtype):
            log.warning("%s: trained on %s grey values, input is %s: check that %s fits", path, m.source, dtype, m)
    return model


class OnnxModel:
    """One ``.onnx`` model written by :func:`unet.export.export_onnx`, or several averaged, run by ONNX Runtime.

    It has what tiling needs (:class:`unet.tiling.TileModel`): the tile shapes, read from the model's
    metadata because its graph's dimensions are dynamic, and ``predict_on_batch``, which returns the log of
    the members' mean probability (as :class:`unet.export.MeanProbabilityLogits` does for a Keras ensemble).

    Args:
        paths: the ``.onnx`` files (same tile geometry). dtype: the stack's dtype (checked against the
            models' intensity maps). threads: ONNX Runtime's intra-op threads (0: one per core).
        optimization: ONNX Runtime's graph optimisation level: ``basic``, ``extended`` or ``all``.

    Raises:
        DataError: no such file, not an ONNX model, not one written by this project, or members whose tiles differ.
    """

    def __init__(self, paths: Sequence[str | Path], dtype: np.dtype, threads: int = 0, optimization: str = "all"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        if optimization not in ("basic", "extended", "all"):
            raise ValueError(f"optimization: invalid value {optimization!r}: must be basic, extended or all")
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{optimization.upper()}")
        opts.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
        self.sessions, shapes = [], set()
        for path in paths:
            if not Path(path).is_file():
                raise DataError(f"{path}: no such model file")
            try:
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ONNX Runtime raises its own exception types for a file that is not a model
                raise DataError(f"{path}: not an ONNX model ({str(exc).strip().splitlines()[0][:120]})") from exc
            shapes.add(_onnx_tiles(path, session.get_modelmeta().custom_metadata_map, dtype))
            self.sessions.append(session)
        if len(shapes) > 1:
            raise DataError(f"{', '.join(map(str, paths))}: the models' tile sides differ ({sorted(shapes)})")
        tile, out = shapes.pop()
        self.input_shape, self.output_shape = (None, tile, tile, 1), (None, out, out, 2)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """Logits (batch, out, out, 2) of raw grey tiles (batch, tile, tile, 1); several members: log mean softmax."""
        logits = [s.run(None, {s.get_inputs()[0].name: batch})[0] for s in self.sessions]
        if len(logits) == 1:
            return logits[0]
        probs = [np.exp(x - x.max(-1, keepdims=True)) for x in logits]
        mean = sum(p / p.sum(-1, keepdims=True) for p in probs) / len(probs)
        return np.log(np.maximum(mean, 1e-12))


def _onnx_tiles(path: str | Path, meta: dict[str, str], dtype: np.dtype) -> tuple[int, int]:
    """(tile, out) from an ONNX model's metadata; a warning when its intensity map was fitted on another dtype."""
    if "unet.tile" not in meta:
        raise DataError(f"{path}: ONNX model has no unet.tile metadata (export it with unet.export.export_onnx)")
    maps = json.loads(meta.get("unet.intensity", "[]"))
    if not maps:
        raise DataError(f"{path}: ONNX model stores no intensity map (re-register it from a current .keras model)")
    for m in maps:
        if m["source"] != str(dtype):
            log.warning("%s: trained on %s grey values, input is %s: check that %s fits", path, m["source"], dtype, m)
    return int(meta["unet.tile"]), int(meta["unet.out"])


def needs_bigtiff(info: StackInfo, dtype: np.dtype) -> bool:
    """Whether ``info.slices`` pages of ``dtype`` outgrow a classic (32-bit offset) TIFF."""
    return info.slices * info.height * info.width * np.dtype(dtype).itemsize > BIGTIFF_ABOVE


class Progress:
    """Slices done: a tqdm bar when ``stream`` is a terminal, else a log line (done/total, img/s, ETA)
    every ``every`` seconds and at the end, for CI, Prefect and nohup logs."""

    def __init__(self, total: int, every: float = 30.0, stream: TextIO | None = None):
        from tqdm import tqdm

        stream = stream or sys.stderr
        self.total, self.every, self.done = total, every, 0
        self.t0 = self.last = time.monotonic()
        isatty = getattr(stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, unit="slice", desc="predict", file=stream) if isatty else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("%d/%d slices, %.3g img/s, ETA %s", self.done, self.total, rate, _hms(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def output_format(dest: str | Path) -> str:
    """``tiff`` or ``zarr``, from the name of the output (``.tif``/``.tiff``, ``.zarr``/``.ome.zarr``).

    Raises:
        DataError: any other name.
    """
    suffix = Path(dest).suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix == ".zarr":
        return "zarr"
    raise DataError(f"{dest}: output must be a .tif/.tiff file or a .zarr/.ome.zarr OME-Zarr image")


def check_output(dest: str | Path) -> str:
    """The output's format (:func:`output_format`), once ``dest`` is known not to replace anything of the user's:
    an existing directory is replaced only when it is an OME-Zarr image that ``unet predict`` wrote.

    Raises:
        DataError: a bad name, or a ``dest`` that exists and is not such an image (an existing TIFF is replaced).
    """
    kind = output_format(dest)
    dest = Path(dest)
    if kind == "zarr" and dest.exists() and not omezarr.ours(dest):
        raise DataError(f"{dest}: exists and is not an OME-Zarr image unet predict wrote; remove it or name another")
    if kind == "tiff" and dest.is_dir():
        raise DataError(f"{dest}: output is a directory; name the output file (OUT.tif)")
    return kind


def predict_file(
    src: str | Path,
    dest: str | Path | None,
    models: Sequence[str | Path],
    *,
    batch_size: int = 8,
    tta: bool = False,
    threshold: float | None = None,
    log_every: float = 30.0,
    engine: str = "keras",
    threads: int = 0,
    optimization: str = "all",
    label_name: str | None = None,
) -> dict[str, Any]:
    """Segment the stack ``src`` (multi-page TIFF, single PNG/TIFF, directory of slices or OME-Zarr image) into
    ``dest``.

    Writes float32 foreground probabilities in [0, 1], or masks above ``threshold``, one slice at a time: to a
    TIFF (one page per slice, BigTIFF when the output outgrows 4 GB; masks 0/255) or, for a ``.zarr`` ``dest``,
    an OME-Zarr image with the input's axes and scale (masks 0/1 as an NGFF labels image). ``label_name``
    (with ``threshold``, an OME-Zarr ``src`` and no ``dest``) adds the masks to ``src`` as ``labels/<name>``
    instead. Several ``models`` are averaged. ``engine`` ``onnx`` runs ``.onnx`` models with ONNX Runtime
    (``threads``, 0: one per core; ``optimization``: see :class:`OnnxModel`).

    Returns:
        A summary: slices, height, width, dtype, bigtiff, seconds, img_per_s.

    Raises:
        DataError: a bad input, output name or model file, before anything is written; or a slice that
            cannot be decoded, in which case no output is left.
    """
    src = Path(src)
    kind = "labels" if label_name is not None else check_output(dest or "")
    if kind == "labels":
        if threshold is None:
            raise DataError(f"{src}: labels need a threshold (they are masks)")
        omezarr.check_new_label(src, label_name or "", str(src))
    info, slices = stack_info(src), iter_slices(src)
    model = load_models(models, info.dtype, engine, threads, optimization)
    out_dtype = np.dtype(np.uint8 if threshold is not None else np.float32)
    bigtiff = kind == "tiff" and needs_bigtiff(info, out_dtype)
    progress = Progress(info.slices, log_every)
    foreground = 255 if kind == "tiff" else 1  # NGFF labels: 0 background, 1 the object class
    t0 = time.monotonic()

    def pages() -> Iterator[np.ndarray]:
        for prob in iter_predictions(model, slices, batch_size, tta):
            progress.update()
            yield (prob > threshold).astype(np.uint8) * foreground if threshold is not None else prob

    try:
        _write(kind, src, dest, label_name, pages(), info, out_dtype, bigtiff)
    finally:
        progress.close()
    seconds = time.monotonic() - t0
    size = {"slices": info.slices, "height": info.height, "width": info.width, "dtype": str(out_dtype)}
    return {**size, "bigtiff": bigtiff, "seconds": seconds, "img_per_s": info.slices / max(seconds, 1e-9)}


def _write(
    kind: str,
    src: Path,
    dest: str | Path | None,
    label_name: str | None,
    pages: Iterator[np.ndarray],
    info: StackInfo,
    dtype: np.dtype,
    bigtiff: bool,
) -> None:
    """Write ``pages`` as ``kind`` says: a TIFF or OME-Zarr image at ``dest`` (atomically), or labels into ``src``."""
    if kind == "labels":
        omezarr.add_labels(src, label_name or "", pages, str(src))
        return
    with atomic_path(Path(dest or "")) as tmp:
        if kind == "tiff":
            shape = (info.slices, info.height, info.width) if info.slices > 1 else (info.height, info.width)
            tifffile.imwrite(tmp, pages, shape=shape, dtype=dtype, bigtiff=bigtiff, photometric="minisblack")
            return
        layout = (
            omezarr.layout_of(src, str(src))
            if is_zarr(src)
            else omezarr.plain_layout(info.slices, info.height, info.width)
        )
        omezarr.write(tmp, pages, layout, dtype, labels=dtype == np.uint8)  # uint8: masks, float32: probabilities


def load_models(
    paths: Sequence[str | Path], dtype: np.dtype, engine: str = "keras", threads: int = 0, optimization: str = "all"
) -> TileModel:
    """The model or ensemble of ``paths`` for ``engine`` (``keras``: one Keras model; ``onnx``: ONNX Runtime)."""
    if engine == "onnx":
        return OnnxModel(paths, dtype, threads, optimization)
    if engine != "keras":
        raise ValueError(f"engine: invalid value {engine!r}: must be keras or onnx")
    from unet.export import ensemble

    return ensemble([load_model(p, dtype) for p in paths])


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
