"""One intensity map, fitted in training and stored with the model: uint8 stays x/255; a uint16 or float stack
of the same content trains on the same [0, 1] values and predicts the same; ensemble members keep their own."""

import keras
import numpy as np
import pytest

from tests.conftest import TINY, synthetic
from unet.config import Config, from_dict
from unet.export import ensemble
from unet.intensity import UINT8, Intensity, IntensityMap, fit_intensity, intensities, with_intensity
from unet.model import build_unet
from unet.predict import load_model
from unet.samples import make_data
from unet.tiling import predict_slices

pytestmark = pytest.mark.core
EXACT = keras.backend.backend() == "tensorflow"  # XLA on JAX divides by a broadcast scalar as x * (1/s): 1 ulp


def test_uint8_maps_by_x_over_255_on_the_host_and_in_the_model():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert fit_intensity(x) == UINT8
    np.testing.assert_array_equal(UINT8.apply(x), x.astype(np.float32) / 255.0)
    inp = keras.Input((16, 16, 1))
    mapped = keras.Model(inp, IntensityMap(0.0, 255.0, "uint8")(inp)).predict_on_batch(x[None, ..., None])
    np.testing.assert_allclose(np.asarray(mapped)[0, ..., 0], x / np.float32(255), rtol=0 if EXACT else 2.5e-7)


@pytest.fixture(scope="module")
def stacks():
    images, labels = synthetic(4, 60)
    assert images.min() == 0 and images.max() == 255  # the full range: min/max of every variant is 0 and 1
    unit = images.astype(np.float32) / 255.0
    return images, labels, {"uint16": images.astype(np.uint16) * 257, "float": unit, "float x1000": unit * 1000}


def test_other_dtypes_train_on_the_values_uint8_trains_on(stacks):
    images, labels, variants = stacks
    unit = images.astype(np.float32) / 255.0  # what augment() makes of uint8 on the device
    loss = Config().train.loss
    for name, stack in variants.items():
        data = make_data(stack, labels, loss)
        assert data.intensity == Intensity(0.0, float(stack.max()), str(stack.dtype)), name
        np.testing.assert_allclose(data.images, unit, rtol=0 if name != "float x1000" else 1e-6, atol=0)


def test_the_same_weights_behind_each_stacks_own_map_predict_the_same(stacks, tmp_path):
    """With the training tensors equal (above), training gives the same weights; the saved model then maps
    each stack by its own fitted map (train() saves ``with_intensity(unet, data.intensity)``)."""
    images, labels, variants = stacks
    keras.utils.set_random_seed(0)
    unet = build_unet(from_dict(Config, TINY).train.model)
    expect = predict_slices(with_intensity(unet, UINT8), images, batch_size=4)
    for name, stack in variants.items():
        model = with_intensity(unet, make_data(stack, labels, Config().train.loss).intensity)
        if name == "uint16":  # through a file, as evaluate and predict load it
            model.save(tmp_path / "m.keras")
            model = load_model(tmp_path / "m.keras", stack.dtype)
        assert intensities(model) == [fit_intensity(stack)]
        got = predict_slices(model, stack, batch_size=4)
        if EXACT and name != "float x1000":  # the same real number, correctly rounded: bit for bit
            np.testing.assert_array_equal(got, expect, err_msg=name)
        np.testing.assert_allclose(got, expect, atol=1e-5, err_msg=name)


def test_ensemble_members_apply_their_own_map_after_a_save_round_trip(stacks, tmp_path):
    _, _, variants = stacks
    maps = [Intensity(0.0, 65535.0, "uint16"), Intensity(2000.0, 50000.0, "uint16")]  # two folds' ranges
    members = []
    for seed, m in enumerate(maps):
        keras.utils.set_random_seed(seed)
        members.append(with_intensity(build_unet(from_dict(Config, TINY).train.model), m))
    stack = variants["uint16"][:2]
    each = [predict_slices(m, stack, batch_size=4) for m in members]
    ensemble(members).save(tmp_path / "ens.keras")  # what the register stage exports
    loaded = load_model(tmp_path / "ens.keras", stack.dtype)
    assert intensities(loaded) == maps
    np.testing.assert_allclose(predict_slices(loaded, stack, batch_size=4), (each[0] + each[1]) / 2, atol=2e-6)
