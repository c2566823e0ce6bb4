import keras
import numpy as np
import pytest

from unet.config import ModelConfig, RegisterConfig
from unet.export import ensemble, export, load_saved_model
from unet.model import build_unet
from unet.registry import choose

pytestmark = pytest.mark.core


def _models(n: int) -> list[keras.Model]:
    out = []
    for seed in range(n):
        keras.utils.set_random_seed(seed)
        out.append(build_unet(ModelConfig(base_filters=4, depth=3, tile=92)))
    return out


def test_export_reproduces_the_in_memory_model(tmp_path):
    model = _models(1)[0]
    x = np.random.default_rng(0).random((2, 92, 92, 1), np.float32)
    paths = export(model, tmp_path)
    expect = keras.ops.convert_to_numpy(model(x))
    got = keras.ops.convert_to_numpy(keras.saving.load_model(paths["keras"], compile=False)(x))
    np.testing.assert_allclose(got, expect, atol=1e-6)
    if keras.backend.backend() == "tensorflow":
        loaded = load_saved_model(paths["saved_model"])
        served = np.asarray(loaded.serve(x))
        np.testing.assert_allclose(served, expect, atol=1e-5)
    else:
        assert "saved_model" not in paths


def test_ensemble_output_is_log_of_mean_probability(tmp_path):
    models = _models(2)
    x = np.random.default_rng(1).random((1, 92, 92, 1), np.float32)
    ens = ensemble(models)
    probs = [keras.ops.convert_to_numpy(keras.ops.softmax(m(x), axis=-1)) for m in models]
    got = keras.ops.convert_to_numpy(keras.ops.softmax(ens(x), axis=-1))
    np.testing.assert_allclose(got, (probs[0] + probs[1]) / 2, atol=1e-5)
    reloaded = keras.saving.load_model(export(ens, tmp_path)["keras"], compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(ens(x)), atol=1e-5)


def test_choose_best_fold_or_ensemble():
    per_fold = {0: {"soft_dice": 0.8, "pixel_error": 0.10}, 1: {"soft_dice": 0.9, "pixel_error": 0.12}}
    assert choose(per_fold, RegisterConfig(metric="soft_dice")) == [1]
    assert choose(per_fold, RegisterConfig(metric="pixel_error")) == [0]  # lower is better
    assert choose(per_fold, RegisterConfig(select="ensemble")) == [0, 1]
    with pytest.raises(ValueError, match=r"register\.metric: invalid value 'auc'"):
        choose(per_fold, RegisterConfig(metric="auc"))
