"""Our models in and out of files: ``.keras`` always, a TensorFlow SavedModel and an ONNX model (Keras's own
exporter, batch and spatial dimensions dynamic, the admissible tile sides and halo in its metadata) when the
backend is TensorFlow, fold ensembles as one Keras model whose output keeps the logits contract, and the one loader.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from unet.geometry import output_size
from unet.intensity import IntensityMap, intensities
from unet.io import DataError
from unet.outputs import atomic_path

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="unet")
class MeanProbabilityLogits(layers.Layer):
    """Averages the softmax of several logit maps and returns its log: softmax(out) is the mean."""

    def call(self, logits: list) -> keras.KerasTensor:
        probs = [ops.softmax(ops.cast(x, "float32"), axis=-1) for x in logits]
        return ops.log(ops.maximum(sum(probs[1:], probs[0]) / len(probs), 1e-12))


def ensemble(models: Sequence[keras.Model]) -> keras.Model:
    """One model averaging the probabilities of ``models`` (same tile geometry); one model is returned as is."""
    if len(models) == 1:
        return models[0]
    inp = keras.Input(models[0].input_shape[1:], name="image")
    outs = []
    for i, m in enumerate(models):
        m.name = f"fold_model_{i}"  # unique names inside the ensemble graph
        outs.append(m(inp))
    return keras.Model(inp, MeanProbabilityLogits(name="ensemble_logits")(outs), name="unet_ensemble")


def load(path: str | Path) -> keras.Model:
    """The one loader of a model this project saved (fold, registered or ensemble), with our layers given
    to Keras explicitly, whatever was imported before.

    Raises:
        DataError: no such file, not a Keras model, or not a 1-channel-in, 2-class-out segmentation model.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file")
    ours = {"unet>IntensityMap": IntensityMap, "unet>MeanProbabilityLogits": MeanProbabilityLogits}
    try:
        model = keras.saving.load_model(path, compile=False, custom_objects=ours)
    except Exception as exc:  # Keras raises many types for a file that is not a model
        raise DataError(f"{path}: not a Keras model ({str(exc).strip().splitlines()[0][:120]})") from exc
    shape = model.input_shape
    if len(shape) != 4 or shape[-1] != 1 or model.output_shape[-1] != 2:
        raise DataError(f"{path}: not a 1-channel-in, 2-class-out segmentation model (input {shape})")
    return model


def export(model: keras.Model, directory: str | Path) -> dict[str, str]:
    """Write ``model.keras`` (and ``saved_model/`` and ``model.onnx`` on TensorFlow) under ``directory``.

    Returns:
        The written paths by format (``keras``, ``saved_model``, ``onnx``), and with ONNX the tile geometry
        that its metadata records (``onnx_tiles``, ``onnx_halo``; see :func:`onnx_metadata`).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"keras": str(directory / "model.keras")}
    with atomic_path(paths["keras"]) as tmp:
        model.save(tmp)
    if keras.backend.backend() != "tensorflow":
        # Keras exports ONNX on JAX through jax2onnx, which this project does not pin
        log.info(
            "SavedModel and ONNX export skipped: they need the TensorFlow backend (this is %s)", keras.backend.backend()
        )
        return paths
    paths["saved_model"] = str(directory / "saved_model")
    with atomic_path(paths["saved_model"]) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    paths["onnx"] = str(directory / "model.onnx")
    meta = export_onnx(model, paths["onnx"])
    return {**paths, "onnx_tiles": meta["unet.tiles"], "onnx_halo": meta["unet.halo"]}


def onnx_metadata(model: keras.Model) -> dict[str, str]:
    """What an ONNX runtime needs to know that the graph's dynamic shapes do not say, as ONNX metadata_props.

    The valid convolutions accept only some input sides (each pooled map even): ``unet.tiles`` lists the
    admissible square tile sides up to 1024 (then every ``unet.tile_step``-th side), ``unet.halo`` is the
    context in pixels that each side loses, so an input of side t gives an output of side t - 2 * halo.
    ``unet.tile``/``unet.out`` are the sides the model was built for, ``unet.intensity`` its intensity maps.
    """
    tile, out = int(model.input_shape[1]), int(model.output_shape[1])
    depth = next(d for d in range(1, 10) if output_size(tile, d) == out)
    tiles = [t for t in range(1, 1025) if output_size(t, depth)]
    return {
        "unet.tile": str(tile),
        "unet.out": str(out),
        "unet.halo": str((tile - out) // 2),
        "unet.depth": str(depth),
        "unet.tiles": ",".join(map(str, tiles)),
        "unet.tile_step": str(tiles[1] - tiles[0]),
        "unet.intensity": json.dumps([vars(i) for i in intensities(model)]),
        "unet.output": "logits (batch, h, w, 2); softmax channel 1 is the foreground probability",
    }


def export_onnx(model: keras.Model, path: str | Path) -> dict[str, str]:
    """Write ``model`` (TensorFlow backend) as ONNX with dynamic batch, height and width; return its metadata.

    Input ``grey`` (batch, height, width, 1) float32 raw grey values (the model's own intensity map is in the
    graph), output ``logits`` (batch, height - 2 halo, width - 2 halo, 2).
    """
    meta = onnx_metadata(model)
    convert_onnx(model, path, meta, output=("logits", "out_h", "out_w"))
    return meta


def convert_onnx(model: keras.Model, path: str | Path, metadata: dict[str, str], output: tuple[str, str, str]) -> int:
    """Convert ``model`` (TensorFlow backend, one (batch, h, w, 1) float32 input named ``grey``) to an ONNX
    file with dynamic batch and spatial sides, ``metadata`` as its metadata_props; return its opset.

    ``output``: the output's name and the names of its dynamic height and width.
    """
    import onnx
    import tensorflow as tf

    # None in all three: tf2onnx converts the valid convolutions, pools and crop-and-concat with symbolic
    # shapes, so one file serves every admissible tile side and batch size (tested at several sides)
    spec = keras.InputSpec(shape=(None, None, None, 1), dtype="float32", name="grey")
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its opset/optimiser notes are not ours to show
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # numpy's note on the np.object Keras probes
        try:
            with _quiet_stderr():
                model.export(str(tmp), format="onnx", input_signature=[spec], verbose=False)
        except Exception as exc:  # any converter failure: try tf2onnx itself, which raises its own error
            # Keras wraps tf2onnx with its own numpy-2 patches and endpoint tracking; should that layer fail
            # (a Keras/tf2onnx version skew), convert the model's call as a tf.function with the same signature
            log.warning("Keras's ONNX export failed (%s): converting with tf2onnx directly", exc)
            import tf2onnx

            sig = (tf.TensorSpec((None, None, None, 1), tf.float32, name="grey"),)
            fn = tf.function(lambda x: model(x, training=False), input_signature=sig)
            with _quiet_stderr():
                tf2onnx.convert.from_function(fn, input_signature=sig, output_path=str(tmp))
        proto = onnx.load(str(tmp))
        _name_dims(proto, output)
        onnx.helper.set_model_props(proto, metadata)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: tf2onnx's grappler pass logs "Starting new session" at INFO through
    absl's C++ logging, below any Python filter (4 lines a conversion). Exceptions still propagate."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _name_dims(proto, output: tuple[str, str, str]) -> None:  # type: ignore[no-untyped-def]
    """tf2onnx names the dynamic dimensions unk__N and the output Identity:0: give them names a user reads."""
    graph, name = proto.graph, output[0]
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    graph.output[0].name = name
    for value, names in (
        (graph.input[0], ("batch", "height", "width")),
        (graph.output[0], ("batch", *output[1:])),
    ):
        for dim, dim_name in zip(value.type.tensor_type.shape.dim, names, strict=False):
            dim.dim_param = dim_name


def check_onnx(path: str | Path, model: keras.Model, x: np.ndarray, atol: float = 1e-4) -> float:
    """Max |ONNX Runtime - Keras| of the logits on ``x``; raise ``RuntimeError`` above ``atol``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    diff = float(np.abs(got - keras.ops.convert_to_numpy(model(x))).max())
    if diff > atol:
        raise RuntimeError(f"{path}: ONNX Runtime's output differs from Keras's (max |diff| {diff:.2e})")
    return diff


def load_saved_model(path: str | Path):  # type: ignore[no-untyped-def]
    """Load a SavedModel (TensorFlow only); ``.serve(batch)`` runs it. Keep the object alive while serving."""
    import tensorflow as tf

    return tf.saved_model.load(str(path))
