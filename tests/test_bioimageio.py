"""The BioImage Model Zoo package (unet.bioimageio): built from tiny seeded models on a real ISBI tile, it
passes bioimageio.core's own model test for every weight format, and a whole real slice predicted through
bioimageio.core agrees with ``unet predict`` (Keras and ONNX Runtime engines)."""

import os
import zipfile

import keras
import numpy as np
import pytest
import tifffile
from ruamel.yaml import YAML

from unet import bioimageio, registry
from unet.cli import main
from unet.config import ModelConfig, RegisterConfig
from unet.export import MeanProbabilityLogits, ensemble, export
from unet.intensity import UINT8, Intensity, with_intensity
from unet.model import build_unet

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="ONNX export needs TensorFlow")

NET = {"base_filters": 4, "depth": 3, "dropout": 0.0}  # depth 3: 92 -> 52, halo 20, sides 44 + 4n
CARD = {
    "name": "tiny",
    "description": "A tiny seeded U-Net.",
    "dataset": "ISBI 2012 EM",
    "foreground": "cell interior",
    "folds": [0],
    "cross_validated": {"folds": 5, "vrand": {"mean": 0.9, "std": 0.01}},
    "caveat": "Untrained.",
}


def tiny(seed: int, intensity: Intensity = UINT8) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return with_intensity(build_unet(ModelConfig(tile=92, **NET)), intensity)


def prob(logits) -> np.ndarray:
    logits = keras.ops.convert_to_numpy(logits)
    return 1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))


@pytest.fixture(scope="module")
def slices(isbi) -> np.ndarray:
    return tifffile.imread(isbi / "train-volume.tif", key=[3, 4])


def build(model: keras.Model, slices: np.ndarray, path) -> dict:
    """A package of ``model`` as register writes it, with its test tile cut from a real slice."""
    side = bioimageio.sample_side(model, slices[0].shape)
    tile = slices[0][100 : 100 + side, 200 : 200 + side]
    doc = registry.page(CARD, bioimageio.tile_sizes(model), 3)
    return bioimageio.write_package(model, path, RegisterConfig(), tile, doc, bioimageio.cover(path.parent, "x", tile))


@pytest.fixture(scope="module")
def package(slices, tmp_path_factory):
    d = tmp_path_factory.mktemp("bioimageio")
    model = tiny(0)
    return model, d / "model.zip", build(model, slices, d / "model.zip")


def rdf(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return YAML(typ="safe").load(z.read("rdf.yaml"))


def test_package_passes_bioimageio_cores_model_test_for_every_weight_format(package):
    model, path, written = package
    assert written == {"weights": ["keras_v3", "onnx"], "min": 44, "step": 4, "halo": 20, "tile": 92}
    bioimageio.check_package(path, ["onnx", "keras_v3"])  # raises unless each test's status is "passed"
    d = rdf(path)
    (inp,), (out,) = d["inputs"], d["outputs"]
    assert inp["data"]["type"] == "uint8" and inp["pad"] == {"mode": "symmetric"}
    assert [p["id"] for p in inp["preprocessing"]] == ["ensure_dtype", "scale_linear", "ensure_dtype"]
    assert inp["preprocessing"][1]["kwargs"] == {"gain": 1 / 255, "offset": 0.0}
    assert [a.get("size") for a in inp["axes"][1:3]] == [{"min": 44, "step": 4}] * 2
    assert [(a["halo"], a["size"]["tensor_id"]) for a in out["axes"][1:3]] == [(20, "grey")] * 2
    assert {c["doi"] for c in d["cite"]} == {"10.1007/978-3-319-24574-4_28", "10.3389/fnana.2015.00142"}
    assert d["license"] == "CC-BY-4.0" and d["authors"] == [{"name": "the model's trainers"}]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        x, y = (np.load(z.open(f"test_{t}.npy")) for t in ("input", "output"))
    assert {"weights.onnx", "weights.keras", "cover.png", "README.md"} <= names
    assert x.dtype == np.uint8 and x.shape == (1, 92, 92, 1)
    # the test output is the registered model's foreground probability, zero within the halo
    expect = prob(model(x.astype(np.float32)))
    assert np.abs(y[0, 20:-20, 20:-20, 0] - expect[0]).max() <= 1e-5 and not y[0, :20].any()


def test_ensemble_package_averages_the_members_probabilities(slices, tmp_path):
    models = [tiny(0), tiny(1)]
    ens = ensemble(models)
    net, intensity = bioimageio.package_model(ens)
    assert intensity == UINT8 and not any(isinstance(la, MeanProbabilityLogits) for la in net.layers)
    x = slices[:, :92, :92, None].astype(np.float32)
    got = keras.ops.convert_to_numpy(net(x / 255))[:, 20:-20, 20:-20, 0]
    assert np.abs(got - prob(ens(x))).max() <= 1e-5
    # members trained with different maps keep them in the weights: the package casts only
    odd = ensemble([tiny(0, Intensity(0.0, 200.0, "uint16")), tiny(1)])
    net, intensity = bioimageio.package_model(odd)
    assert intensity is None
    got = keras.ops.convert_to_numpy(net(x))[:, 20:-20, 20:-20, 0]
    assert np.abs(got - prob(odd(x))).max() <= 1e-5
    build(ens, slices, tmp_path / "ens.zip")
    bioimageio.check_package(tmp_path / "ens.zip", ["onnx"])


def test_whole_slice_through_bioimageio_core_matches_unet_predict(package, slices, tmp_path):
    """bioimageio.core's blockwise prediction uses the block grid of unet.tiling (92 px blocks: 52 px inner
    tiles from the slice's corner, the halo padded symmetrically) except that its last block in each axis
    ends at the slice's edge (460 instead of 468): a shift of 8 px, a multiple of the 4 px pooling grid of
    a depth-3 U-Net, so every pixel agrees. (With a shift that is not a multiple of 2^(depth-1), the last
    row and column of blocks would see the pooling grid at another phase and differ.)"""
    bioimageio_core = bioimageio.core()
    model, path, _ = package
    paths = export(model, tmp_path / "registered")
    src = tmp_path / "slice.tif"
    tifffile.imwrite(src, slices[0], photometric="minisblack")
    main(["predict", str(src), str(tmp_path / "keras.tif"), "--models", paths["keras"]])
    main(["predict", str(src), str(tmp_path / "onnx.tif"), "--engine", "onnx", "--models", paths["onnx"]])
    by_keras, by_onnx = tifffile.imread(tmp_path / "keras.tif"), tifffile.imread(tmp_path / "onnx.tif")
    blocks = {"grey": {"y": 92, "x": 92}}
    for weights in ("onnx", "keras_v3"):
        pipeline = bioimageio_core.create_prediction_pipeline(
            bioimageio_core.load_description(path), weight_format=weights
        )
        sample = bioimageio_core.predict(model=pipeline, inputs=slices[0][None, :, :, None], input_block_shape=blocks)
        got = sample.members["probability"].data.values[0, :, :, 0]
        assert got.shape == (512, 512)
        assert np.abs(got - by_keras).max() <= 1e-4 and np.abs(got - by_onnx).max() <= 1e-4, weights
    # bioimageio.core's Keras adapter set KERAS_BACKEND for every later subprocess: to the backend running here
    assert os.environ.get("KERAS_BACKEND", keras.backend.backend()) == keras.backend.backend()


def test_package_errors(package, slices, tmp_path, monkeypatch):
    model, _, _ = package
    with pytest.raises(ValueError, match="smaller than the model's smallest tile"):
        bioimageio.sample_side(model, (40, 512))
    assert bioimageio.sample_side(model, (512, 70)) == 68  # the largest admissible side that fits
    real = bioimageio.run_network
    monkeypatch.setattr(bioimageio, "run_network", lambda net, onnx, x: real(net, onnx, x) + 0.1)
    build(model, slices, tmp_path / "bad.zip")
    with pytest.raises(RuntimeError) as err:
        bioimageio.check_package(tmp_path / "bad.zip", ["onnx"])
    assert "bioimageio.core's model test failed (onnx)" in str(err.value) and "\n" not in str(err.value)


def test_package_network_takes_any_admissible_side_in_float32():
    """A fold model keeps its training tile and mixed precision policy; the package's network has neither."""
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny(0)
    finally:
        keras.config.set_dtype_policy("float32")
    net, _ = bioimageio.package_model(model)
    inner = net.get_layer("unet")
    assert {la.dtype_policy.name for la in inner.layers} == {"float32"}
    assert net(np.zeros((1, 132, 132, 1), np.float32)).shape == (1, 132, 132, 1)
