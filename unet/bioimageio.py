"""The BioImage Model Zoo package of a registered model (spec 0.5, written with ``bioimageio.spec``).

The package's network takes the preprocessed grey values and returns the foreground probability at the
input's size: our intensity map becomes the spec's own preprocessing (``ensure_dtype``, ``scale_linear``),
the logits become ``sigmoid(l1 - l0)`` (softmax channel 1) with built-in Keras layers only, so the ``.keras``
weights load with plain ``keras.models.load_model``, and the output is zero-padded by the valid convolutions'
context, which the description declares as the output's ``halo``: bioimage.io tools pad each input block by it
(symmetrically, as :mod:`unet.tiling` does) and crop it off. Weights: ONNX (TensorFlow backend) and Keras v3.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import keras
import numpy as np
from keras import layers

from unet.config import RegisterConfig
from unet.export import MeanProbabilityLogits, convert_onnx, onnx_metadata
from unet.intensity import UINT8, Intensity, IntensityMap
from unet.outputs import atomic_path

log = logging.getLogger(__name__)

INPUT, OUTPUT = "grey", "probability"  # the package's tensor ids
CITATIONS = (
    (
        "Ronneberger, Fischer, Brox (2015): U-Net: Convolutional Networks for Biomedical Image Segmentation",
        "10.1007/978-3-319-24574-4_28",
    ),
    (
        "Arganda-Carreras et al. (2015): Crowdsourcing the creation of image segmentation algorithms for "
        "connectomics (the ISBI 2012 challenge and its data)",
        "10.3389/fnana.2015.00142",
    ),
)


def quiet_library_logs() -> None:
    """bioimageio.spec and .core log through loguru at INFO to stderr: keep their warnings and errors only."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING", format="bioimageio: {message}")


def _split(member: keras.Model) -> tuple[Intensity, keras.Model]:
    """A saved model's intensity map and the network behind it (a model saved without a map reads uint8)."""
    maps = [la for la in member.layers if isinstance(la, IntensityMap)]
    inner = [la for la in member.layers if isinstance(la, keras.Model)]
    if len(maps) == 1 and len(inner) == 1:
        return maps[0].intensity, _any_size(inner[0])
    return UINT8, _any_size(member)


def _any_size(net: keras.Model) -> keras.Model:
    """``net`` rebuilt for inputs of any side and in float32, with its weights.

    A saved U-Net's input is its training tile, which Keras enforces on a reloaded model, and its layers
    carry the training's mixed precision policy; the valid convolutions' crops do not depend on the side.
    """

    def plain(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("class_name") == "InputLayer":
                node["config"]["batch_shape"] = [None, None, None, node["config"]["batch_shape"][-1]]
            if node.get("class_name") == "DTypePolicy":
                node["config"]["name"] = "float32"
            return {k: plain(v) for k, v in node.items()}
        return [plain(v) for v in node] if isinstance(node, list) else node

    rebuilt = keras.Model.from_config(plain(net.get_config()))
    rebuilt.set_weights(net.get_weights())
    return rebuilt


def package_model(model: keras.Model) -> tuple[keras.Model, Intensity | None]:
    """The package's network for a registered model (one fold or a :func:`unet.export.ensemble`).

    Returns:
        The network (batch, h, w, 1) -> foreground probability (batch, h, w, 1), zero outside the valid
        centre, and the intensity map that the package's preprocessing applies, or ``None`` when ensemble
        members were trained with different maps (non-uint8 data): then each member keeps its map in the
        weights, as a built-in ``Rescaling`` layer, and the preprocessing only casts to float32.
    """
    ensembled = any(isinstance(la, MeanProbabilityLogits) for la in model.layers)
    members = [la for la in model.layers if isinstance(la, keras.Model)] if ensembled else [model]
    parts = [_split(m) for m in members]
    shared = parts[0][0] if all(p[0] == parts[0][0] for p in parts) else None
    tile = int(model.input_shape[1])
    halo = (tile - int(model.output_shape[1])) // 2
    inp = keras.Input((None, None, 1), name=INPUT)
    # sigmoid(l1 - l0) is softmax's channel 1: a fixed 1x1 convolution with weights [-1, +1] then a sigmoid
    head = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", trainable=False, name="foreground")
    probs = []
    for i, (intensity, net) in enumerate(parts):
        net.name = f"unet_{i}" if len(parts) > 1 else "unet"  # unique names inside the graph
        x = inp
        if shared is None:
            scale = 1.0 / (intensity.hi - intensity.lo)
            x = layers.Rescaling(scale, -intensity.lo * scale, dtype="float32", name=f"intensity_{i}")(x)
        probs.append(head(net(x)))
    head.set_weights([np.array([-1.0, 1.0], np.float32).reshape(1, 1, 2, 1), np.zeros(1, np.float32)])
    prob = probs[0] if len(probs) == 1 else layers.Average(name="mean_probability")(probs)
    out = layers.ZeroPadding2D(halo, name="halo")(prob)  # back to the input's size: the halo is cropped by the tool
    return keras.Model(inp, out, name="unet_bioimageio"), shared


def tile_sizes(model: keras.Model) -> dict[str, int]:
    """A registered model's tiles: ``min`` (the smallest admissible side), ``step`` (between admissible
    sides), ``halo`` (the context each side loses) and ``tile`` (the side it was trained on)."""
    meta = onnx_metadata(model)
    tiles = meta["unet.tiles"].split(",")
    return {
        "min": int(tiles[0]),
        "step": int(meta["unet.tile_step"]),
        "halo": int(meta["unet.halo"]),
        "tile": int(meta["unet.tile"]),
    }


def sample_side(model: keras.Model, shape: tuple[int, int]) -> int:
    """The side of the package's test tile: the model's own tile, or the largest admissible side that fits
    a slice of ``shape`` (the paper's 572 tile is larger than an ISBI slice).

    Raises:
        ValueError: the slice is smaller than the smallest admissible tile.
    """
    sizes = tile_sizes(model)
    smallest, step = sizes["min"], sizes["step"]
    fits = min(sizes["tile"], *shape)
    if fits < smallest:
        raise ValueError(f"slice of {shape[0]}x{shape[1]} px is smaller than the model's smallest tile ({smallest})")
    return smallest + (fits - smallest) // step * step


def run_network(net: keras.Model, onnx: Path | None, x: np.ndarray) -> np.ndarray:
    """The package network's output on a preprocessed batch ``x``: by ONNX Runtime when there is an ONNX file."""
    if onnx is None:
        return np.asarray(keras.ops.convert_to_numpy(net(x)), np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0], np.float32)


def write_package(
    model: keras.Model,
    dest: str | Path,
    cfg: RegisterConfig,
    tile: np.ndarray,
    documentation: str,
    cover: np.ndarray,
    check: bool = False,
) -> dict[str, Any]:
    """Write the zipped package of ``model`` (registered: raw grey in, logits out) to ``dest``.

    Args:
        tile: the test input, raw grey values (h, w) of an admissible side cut from a held-out slice.
        documentation: the package's documentation page (markdown), whose first paragraph after its title is
            the package's description. cover: its cover image (RGB, 1:1 or 2:1).
        check: run bioimageio.core's model test (:func:`check_package`; the ONNX weights where there are, else
            Keras's) on the package before it becomes ``dest``: a package that fails it is never left there.

    Returns:
        The weight formats written (``weights``) and the model's tiles (:func:`tile_sizes`).
    """
    from bioimageio.spec import ValidationContext, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec
    from PIL import Image

    net, intensity = package_model(model)
    geometry = tile_sizes(model)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # the spec re-reads its own dump of each file entry and notes that it kept the sha256 it had
        warnings.filterwarnings("ignore", message="Found mapping with 'source'", category=UserWarning)
        d = Path(tmp)
        weights = write_weights(net, d)
        x = tile[None, :, :, None]
        np.save(d / "test_input.npy", x)
        scaled = x.astype(np.float32)
        if intensity is not None:
            scaled = scaled * np.float32(_gain(intensity)[0]) + np.float32(_gain(intensity)[1])
        # bioimageio.core's test runs the network on the test input as it is (no halo padding): zero in the halo
        np.save(d / "test_output.npy", run_network(net, d / "weights.onnx" if "onnx" in weights else None, scaled))
        (d / "README.md").write_text(documentation)
        Image.fromarray(cover).save(d / "cover.png")
        descr = spec.ModelDescr(
            name=f"U-Net {cfg.name}",
            description=documentation.split("\n\n")[1].strip()[:500],
            covers=[spec.FileDescr(source=d / "cover.png")],
            documentation=spec.FileDescr(source=d / "README.md"),
            authors=[spec.Author(name=a) for a in cfg.authors],
            cite=[spec.CiteEntry(text=t, doi=spec.Doi(doi)) for t, doi in CITATIONS],
            license=spec.LicenseId(cfg.license),
            tags=["u-net", "segmentation", "2d", "electron-microscopy", "semantic-segmentation"],
            inputs=[_input(d / "test_input.npy", tile.dtype, intensity, geometry)],
            outputs=[_output(d / "test_output.npy", cfg.foreground, geometry["halo"])],
            weights=spec.WeightsDescr(**weights),
        )
        with ValidationContext(perform_io_checks=True), atomic_path(dest) as out:
            save_bioimageio_package(descr, output_path=out)
            if check:
                check_package(out, ["onnx"] if "onnx" in weights else ["keras_v3"])
    return {"weights": sorted(weights), **geometry}


def _gain(intensity: Intensity) -> tuple[float, float]:
    """``(x - lo) / (hi - lo)`` as ``x * gain + offset``."""
    gain = 1.0 / (intensity.hi - intensity.lo)
    return gain, 0.0 - intensity.lo * gain  # 0.0 - : no -0.0 in the description


def _input(test: Path, dtype: np.dtype, intensity: Intensity | None, geometry: dict[str, int]) -> Any:
    """The input's description: raw grey (batch, y, x, 1) of admissible sides, and our intensity map as the
    spec's preprocessing (a cast alone when the ensemble's members keep theirs: :func:`package_model`)."""
    from bioimageio.spec.model import v0_5 as spec

    to_float = spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))
    pre: list[Any] = [to_float]
    if intensity is not None:
        gain, offset = _gain(intensity)
        pre.append(spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=gain, offset=offset)))
    pre.append(to_float)  # else the spec appends a cast back to the input's data type
    size = spec.ParameterizedSize(min=geometry["min"], step=geometry["step"])
    return spec.InputTensorDescr(
        id=spec.TensorId(INPUT),
        description="raw grey values (the stack's own dtype)",
        axes=[
            spec.BatchAxis(),
            *(spec.SpaceInputAxis(id=spec.AxisId(a), size=size) for a in "yx"),
            spec.ChannelAxis(channel_names=[spec.Identifier("grey")]),
        ],
        test_tensor=spec.FileDescr(source=test),
        data=spec.IntervalOrRatioDataDescr(type=cast(Any, str(dtype))),
        pad=spec.SymmetricPadding(mode="symmetric"),  # as unet.tiling pads a slice
        preprocessing=pre,
    )


def _output(test: Path, foreground: str, halo: int) -> Any:
    """The output's description: the foreground probability at the input's size, less ``halo`` on each side."""
    from bioimageio.spec.model import v0_5 as spec

    def side(a: str) -> Any:
        same = spec.SizeReference(tensor_id=spec.TensorId(INPUT), axis_id=spec.AxisId(a))
        return spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), halo=halo, size=same)

    return spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT),
        description=f"probability of {foreground}",
        axes=[spec.BatchAxis(), side("y"), side("x"), spec.ChannelAxis(channel_names=[spec.Identifier("foreground")])],
        test_tensor=spec.FileDescr(source=test),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def write_weights(net: keras.Model, directory: Path) -> dict[str, Any]:
    """Save ``net`` as ``weights.keras`` (and ``weights.onnx`` on TensorFlow); their weight descriptions.

    No ``tensorflow_saved_model_bundle``: bioimageio.core 0.11 runs one through ``TFSMLayer(call_endpoint=
    "serve")`` and requires the call to return a dict of outputs, while the ``serve`` endpoint of Keras 3's
    ``export(format="tf_saved_model")`` returns the tensor itself, so its model test fails on every
    inference (tried: the bundle of this package's network fails each one). ONNX serves the same tools."""
    from bioimageio.spec.model import v0_5 as spec

    backend = keras.backend.backend()
    net.save(directory / "weights.keras")
    if backend == "tensorflow":
        import tensorflow as tf

        version = tf.__version__
    else:
        import jax

        version = jax.__version__
    out: dict[str, Any] = {
        "keras_v3": spec.KerasV3WeightsDescr(
            source=directory / "weights.keras",
            keras_version=spec.Version(keras.__version__),
            backend=(backend, spec.Version(version)),
        )
    }
    if backend != "tensorflow":
        log.info(
            "bioimage.io package: Keras v3 weights only (ONNX export needs the TensorFlow backend, this is %s)", backend
        )
        return out
    meta = {"unet.output": "foreground probability (batch, h, w, 1), zero within the halo of each side"}
    opset = convert_onnx(net, directory / "weights.onnx", meta, output=(OUTPUT, "height", "width"))
    out["onnx"] = spec.OnnxWeightsDescr(source=directory / "weights.onnx", opset_version=opset, parent="keras_v3")
    return out


def cover(overlays: Path, fold: str, tile: np.ndarray) -> np.ndarray:
    """The package's cover (RGB, 1:1, at most 512 px): the first overlay of ``fold`` that the evaluate
    stage drew (image, label, probability, errors), padded white to a square as the spec asks (1:1 or 2:1);
    the test tile in grey when evaluate drew none (``evaluate.overlays: 0``)."""
    from PIL import Image

    found = sorted(overlays.glob(f"{fold}_*.png")) or sorted(overlays.glob("*.png"))
    if found:
        image = Image.open(found[0]).convert("RGB")
    else:
        lo, hi = float(tile.min()), float(tile.max())
        image = Image.fromarray(((tile - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)).convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    square.thumbnail((512, 512))
    return np.asarray(square)


def core() -> Any:
    """``bioimageio.core``, ready for our packages: its Keras backend setting pinned to the backend running
    here. Its Keras adapter sets ``os.environ["KERAS_BACKEND"]`` from that setting (default ``torch``) when
    imported, which every later subprocess would inherit."""
    import bioimageio.core
    from bioimageio.core._settings import settings

    settings.keras_backend = cast(Any, keras.backend.backend())
    return bioimageio.core


def check_package(path: str | Path, weight_formats: Sequence[str] | None = None) -> None:
    """Run bioimageio.core's own model test on the package (each of ``weight_formats``, default all).

    Raises:
        RuntimeError: a test did not pass, naming the first failed check.
    """
    test_model = core().test_model
    formats: list[str | None] = [*weight_formats] if weight_formats else [None]
    for fmt in formats:
        summary = test_model(Path(path), weight_format=fmt)  # type: ignore[arg-type]
        if summary.status != "passed":
            failed = next((d for d in summary.details if d.status == "failed"), None)
            why = f"{failed.name}: {failed.errors[0].msg if failed.errors else ''}" if failed else summary.status
            why = why.strip().splitlines()[0]
            raise RuntimeError(f"{path}: bioimageio.core's model test failed ({fmt or 'all weights'}): {why}")
