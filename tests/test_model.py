import keras
import numpy as np
import pytest

from unet.config import ModelConfig
from unet.geometry import output_size
from unet.model import build_unet

pytestmark = pytest.mark.core  # runs on both backends


def test_paper_parameter_count_and_shape():
    m = build_unet(ModelConfig())
    assert m.count_params() == 31_030_658
    assert m.input_shape == (None, 572, 572, 1) and m.output_shape == (None, 388, 388, 2)


def test_nvidia_variant_parameter_count():
    assert build_unet(ModelConfig(up="transpose3x3")).count_params() == 34_512_258


@pytest.mark.parametrize(("tile", "out"), [(188, 4), (204, 20), (252, 68), (316, 132)])
def test_output_shapes_depth5(tile, out):
    m = build_unet(ModelConfig(base_filters=2), tile=tile)
    y = m(np.zeros((1, tile, tile, 1), np.float32))
    assert tuple(y.shape) == (1, out, out, 2) and output_size(tile, 5) == out == tile - 184


@pytest.mark.parametrize(("depth", "tile", "out"), [(3, 92, 52), (4, 188, 100), (2, 20, 4)])
def test_output_shapes_other_depths(depth, tile, out):
    m = build_unet(ModelConfig(base_filters=2, depth=depth, tile=tile))
    assert m.output_shape == (None, out, out, 2)


@pytest.mark.parametrize(("tile", "near"), [(187, "188"), (189, "188 or 204"), (570, "556 or 572")])
def test_invalid_tile_names_nearest_valid(tile, near):
    with pytest.raises(ValueError, match=rf"invalid value {tile}: .*\(nearest valid: {near}\)"):
        build_unet(ModelConfig(base_filters=2), tile=tile)


def test_keras_round_trip(tmp_path):
    m = build_unet(ModelConfig(base_filters=4, depth=3, tile=92))
    x = np.random.default_rng(0).random((2, 92, 92, 1), np.float32)
    m.save(tmp_path / "m.keras")
    m2 = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m2(x)), keras.ops.convert_to_numpy(m(x)), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_compute_dtype_and_float32_head(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        m = build_unet(ModelConfig(base_filters=4, depth=3, tile=92))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    conv = m.get_layer("enc0_conv1")
    assert conv.compute_dtype == policy.split("_")[1] and conv.variable_dtype == "float32"
    assert m.get_layer("logits").compute_dtype == "float32"
    y = m(np.zeros((1, 92, 92, 1), np.float32))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
