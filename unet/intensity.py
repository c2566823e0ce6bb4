"""One intensity mapping from raw grey values to the [0, 1] scale the network sees, stored with the model.

uint8 stacks map by ``x / 255`` (fixed); any other dtype by the affine map ``(x - lo) / (hi - lo)`` whose
``lo``, ``hi`` are the minimum and maximum of the fold's training stack. Training fits it
(:func:`fit_intensity`), and the saved model carries it as its first layer (:class:`IntensityMap`), so
evaluation, ``unet predict``, the exported ``.keras``/SavedModel and each member of an ensemble all take raw
grey values and apply the mapping of the data that model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers, ops


@dataclass(frozen=True)
class Intensity:
    """The affine map ``(x - lo) / (hi - lo)`` and the dtype of the stack it was fitted on."""

    lo: float
    hi: float
    source: str

    def apply(self, images: np.ndarray) -> np.ndarray:
        """``images`` mapped to float32 (uint8 with the uint8 map: exactly ``x / 255``)."""
        scale = np.float32(self.hi - self.lo)
        return (np.asarray(images, np.float32) - np.float32(self.lo)) / scale


UINT8 = Intensity(0.0, 255.0, "uint8")


def fit_intensity(images: np.ndarray) -> Intensity:
    """The mapping for a training stack: ``x / 255`` for uint8, else its min and max to 0 and 1."""
    if images.dtype == np.uint8:
        return UINT8
    lo, hi = float(images.min()), float(images.max())
    return Intensity(lo, hi if hi > lo else lo + 1.0, str(images.dtype))


@keras.saving.register_keras_serializable(package="unet")
class IntensityMap(layers.Layer):
    """Raw grey values to the network's [0, 1] scale: ``(x - lo) / (hi - lo)``, always in float32.

    ``lo`` and ``hi`` are non-trainable variables rather than constants: graph compilers rewrite a division
    by a constant as a multiplication by its reciprocal, which would move uint8 inputs off ``x / 255``.
    """

    def __init__(self, lo: float, hi: float, source: str, **kwargs: Any):
        kwargs["dtype"] = "float32"  # uint16 values overflow float16; mixed precision starts after this
        super().__init__(**kwargs)
        self.intensity = Intensity(float(lo), float(hi), source)

    def build(self, input_shape: Any) -> None:
        for name in ("lo", "hi"):
            value = getattr(self.intensity, name)
            var = self.add_weight(shape=(), initializer=keras.initializers.Constant(value), trainable=False, name=name)
            setattr(self, name, var)

    def call(self, x: Any) -> Any:
        return ops.divide(ops.subtract(ops.cast(x, "float32"), self.lo), ops.subtract(self.hi, self.lo))

    def get_config(self) -> dict[str, Any]:
        i = self.intensity
        return {**super().get_config(), "lo": i.lo, "hi": i.hi, "source": i.source}


def with_intensity(unet: keras.Model, intensity: Intensity) -> keras.Model:
    """``unet`` (input in [0, 1]) behind its intensity map: the returned model takes raw grey values."""
    inp = keras.Input(unet.input_shape[1:], name="grey")
    mapped = IntensityMap(intensity.lo, intensity.hi, intensity.source, name="intensity")(inp)
    return keras.Model(inp, unet(mapped), name=f"{unet.name}_raw")


def intensities(model: keras.Model) -> list[Intensity]:
    """The intensity maps inside ``model`` (one per ensemble member; none for a model saved without one)."""
    found: list[Intensity] = []
    for layer in model.layers:
        if isinstance(layer, IntensityMap):
            found.append(layer.intensity)
        elif isinstance(layer, keras.Model):
            found += intensities(layer)
    return found
