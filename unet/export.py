"""Our models in and out of files: ``.keras`` always, a TensorFlow SavedModel for serving when the backend is
TensorFlow, fold ensembles as one Keras model whose output keeps the logits contract, and the one loader.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
from keras import layers, ops

from unet.intensity import IntensityMap
from unet.io import DataError, atomic_path

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
    """Write ``model.keras`` (and ``saved_model/`` on TensorFlow) under ``directory``; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"keras": str(directory / "model.keras")}
    with atomic_path(paths["keras"]) as tmp:
        model.save(tmp)
    if keras.backend.backend() == "tensorflow":
        paths["saved_model"] = str(directory / "saved_model")
        with atomic_path(paths["saved_model"]) as tmp:
            model.export(str(tmp), format="tf_saved_model", verbose=False)
    else:
        log.info("SavedModel export skipped: it needs the TensorFlow backend (this is %s)", keras.backend.backend())
    return paths


def load_saved_model(path: str | Path):  # type: ignore[no-untyped-def]
    """Load a SavedModel (TensorFlow only); ``.serve(batch)`` runs it. Keep the object alive while serving."""
    import tensorflow as tf

    return tf.saved_model.load(str(path))
