import keras
import numpy as np
import pytest
from scipy import ndimage

from unet.export import ensemble
from unet.tiling import predict_slices

pytestmark = pytest.mark.core


def mean_filter_model(tile: int, margin: int) -> keras.Model:
    """Logits (0, local mean over a (2m+1)^2 window): a known function needing the full tile context."""
    size = 2 * margin + 1
    inp = keras.Input((tile, tile, 1))
    mean = keras.layers.Conv2D(1, size, use_bias=False, name="mean")(inp)
    logits = keras.layers.Conv2D(2, 1, name="head")(mean)
    m = keras.Model(inp, logits)
    m.get_layer("mean").set_weights([np.full((size, size, 1, 1), 1.0 / size**2, np.float32)])
    m.get_layer("head").set_weights([np.array([[[[0.0, 4.0]]]], np.float32), np.array([0.0, -2.0], np.float32)])
    return m


@pytest.mark.parametrize(("h", "w"), [(37, 53), (12, 12), (5, 70)])
def test_stitched_map_equals_known_function_on_mirror_padded_slice(h, w):
    model = mean_filter_model(tile=20, margin=4)  # 20 -> 12 px output tiles
    rng = np.random.default_rng(0)
    images = rng.random((2, h, w)).astype(np.float32)
    prob = predict_slices(model, images, batch_size=3)
    mean = ndimage.uniform_filter(
        images.astype(np.float64), size=(1, 9, 9), mode="reflect"
    )  # scipy reflect == numpy symmetric
    expect = 1 / (1 + np.exp(-(4 * mean - 2)))
    assert prob.shape == (2, h, w) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, expect, atol=2e-6)


def test_tta_and_ensemble_average():
    model = mean_filter_model(tile=20, margin=4)
    images = np.random.default_rng(1).random((1, 30, 41)).astype(np.float32)
    plain = predict_slices(model, images)
    # a symmetric filter commutes with flips/rotations, so TTA and a 2-model ensemble change nothing
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    np.testing.assert_allclose(predict_slices(ensemble([model, twin]), images, tta=True), plain, atol=2e-6)
    asym = keras.models.clone_model(model)
    w = np.zeros((9, 9, 1, 1), np.float32)
    w[0, 0] = 1.0  # reads the top-left neighbour: changes under flips
    asym.get_layer("mean").set_weights([w])
    asym.get_layer("head").set_weights(model.get_layer("head").get_weights())
    tta = predict_slices(asym, images, tta=True)
    assert not np.allclose(tta, predict_slices(asym, images), atol=1e-3)
    ens = predict_slices(ensemble([asym, model]), images)
    np.testing.assert_allclose(ens, (predict_slices(asym, images) + plain) / 2, atol=2e-6)
