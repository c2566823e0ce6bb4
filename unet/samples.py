"""The training data of one fold: whole slices in host memory, the same slices as device variables, and the
few random numbers a step draws on the host (which slices, which augmentation), a function of (seed, step) alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from unet.augment import draw_params
from unet.config import LossConfig, TrainConfig
from unet.intensity import UINT8, Intensity, fit_intensity
from unet.io import to_binary
from unet.losses import border_weights

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class SliceData:
    """Whole slices held in host memory: images (N, H, W), labels (N, H, W) in {0, 1}, optional weights, and
    the intensity map that took the raw images to [0, 1] (saved with the model)."""

    images: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None = None
    intensity: Intensity = UINT8


def make_data(images: np.ndarray, labels: np.ndarray, loss: LossConfig) -> SliceData:
    """Binarise labels (larger value = foreground), map non-uint8 images to [0, 1] by the intensity map fitted
    on this stack (:func:`unet.intensity.fit_intensity`), add weight maps."""
    intensity = fit_intensity(images)
    if images.dtype != np.uint8:  # uint8 travels to the device as is; augment() scales it by 1/255
        images = intensity.apply(images)
    labels = to_binary(labels)
    weights = np.stack([border_weights(lab, loss.w0, loss.sigma) for lab in labels]) if loss.border_weight else None
    return SliceData(images, labels, weights, intensity)


def draw_step(cfg: TrainConfig, step: int, n_slices: int, slice_hw: tuple[int, int], tile: int, out: int) -> Params:
    """The random parameters of global batch ``step``: slice ``index`` (int32) and those of :func:`draw_params`.

    They depend only on (seed, step), so a resumed run draws exactly the same and any number of processes
    trains on the same samples.
    """
    rng = np.random.default_rng([cfg.seed, step])
    index = rng.integers(0, n_slices, size=cfg.batch_size).astype(np.int32)
    return {"index": index, **draw_params(rng, cfg.batch_size, cfg.augment, slice_hw, tile, out)}


def batches(
    data: SliceData, cfg: TrainConfig, start: int, tile: int, out: int, share: slice = slice(None)
) -> Iterator[tuple[Params]]:
    """Yield this process's ``share`` (:meth:`Distribution.share`; default all) of each global batch's
    parameters (:func:`draw_step`) from step ``start`` on. A few numbers a sample cross to the device a step;
    the slices themselves are already there (:class:`Trainer`).
    """
    hw = (data.images.shape[1], data.images.shape[2])
    for step in itertools.count(start):
        params = draw_step(cfg, step, len(data.images), hw, tile, out)
        yield ({k: v[share] for k, v in params.items()},)  # Keras reads a 1-tuple as (x,)


@dataclass(frozen=True)
class DeviceSlices:
    """The training slices as device variables (a plain holder: Keras does not track it as model state)."""

    image: Any
    label: Any
    weight: Any | None = None

    @classmethod
    def place(cls, data: SliceData) -> DeviceSlices:
        """Copy ``data`` to the default device once, each array in its own dtype."""

        def var(name: str, array: np.ndarray) -> Any:
            return keras.Variable(array, dtype=array.dtype.name, trainable=False, autocast=False, name=name)

        weight = var("slice_weights", data.weights) if data.weights is not None else None
        return cls(var("slice_images", data.images), var("slice_labels", data.labels), weight)

    def variables(self) -> list[Any]:
        return [v for v in (self.image, self.label, self.weight) if v is not None]

    def take(self, index: Any) -> dict[str, Any]:
        """Whole slices ``index`` (B,) -> ``image``, ``label`` (and ``weight``), each (B, H, W), on the device."""
        names = ("image", "label", "weight")
        return {n: ops.take(getattr(self, n), index, axis=0) for n in names if getattr(self, n) is not None}
