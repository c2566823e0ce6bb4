"""ONNX export and the ONNX Runtime engine: Keras's own exporter with dynamic batch and tile sides, ONNX Runtime
against Keras on real ISBI tiles (single models, ensembles, ``unet predict --engine onnx`` with TTA), and an ONNX
predict path that imports no Keras, TensorFlow or JAX."""

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tifffile

from tests.conftest import ROOT
from unet.cli import main
from unet.config import ModelConfig
from unet.export import ensemble, export, export_onnx
from unet.intensity import UINT8, with_intensity
from unet.model import build_unet
from unet.predict import OnnxModel

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="ONNX export needs TensorFlow")

NET = {"base_filters": 4, "depth": 3, "dropout": 0.0}  # depth 3: 92 -> 52, halo 20


def prob(logits: np.ndarray) -> np.ndarray:
    """Foreground probability of logits (..., 2), as tiling computes it."""
    return 1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1]))


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two seeded tiny U-Nets behind the uint8 intensity map, each exported as ``register`` exports."""
    d = tmp_path_factory.mktemp("onnx")
    out = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        model = with_intensity(build_unet(ModelConfig(tile=92, **NET)), UINT8)
        out.append((model, export(model, d / f"m{seed}")))
    return out


@pytest.fixture(scope="module")
def real(isbi) -> np.ndarray:
    return tifffile.imread(isbi / "train-volume.tif")[:2]


def tiles(images: np.ndarray, side: int, n: int = 4) -> np.ndarray:
    """``n`` raw grey tiles (n, side, side, 1) float32 cut from real slices."""
    corners = [(0, 0), (100, 300), (512 - side, 17), (250, 512 - side)][:n]
    return np.stack([images[i % len(images), y : y + side, x : x + side] for i, (y, x) in enumerate(corners)])[
        ..., None
    ].astype(np.float32)


def test_onnx_matches_keras_on_real_tiles_at_every_admissible_side(models, real):
    model, paths = models[0]
    assert paths["onnx_halo"] == "20" and {"92", "188"} <= set(paths["onnx_tiles"].split(","))
    proto = onnx.load(paths["onnx"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["unet.tile"], meta["unet.out"], meta["unet.halo"], meta["unet.tile_step"]) == ("92", "52", "20", "4")
    assert json.loads(meta["unet.intensity"]) == [{"lo": 0.0, "hi": 255.0, "source": "uint8"}]
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:3] == ["batch", "height", "width"] and proto.graph.output[0].name == "logits"
    s = session(paths["onnx"])
    for side, batch in ((92, 4), (92, 1), (188, 3)):  # the file's batch and spatial sides are dynamic
        same = with_intensity(build_unet(ModelConfig(tile=side, **NET)), UINT8)
        same.set_weights(model.get_weights())
        x = tiles(real, side, batch)
        got = prob(s.run(None, {"grey": x})[0])
        expect = prob(keras.ops.convert_to_numpy(same(x)))
        assert got.shape == (batch, side - 40, side - 40)
        assert np.abs(got - expect).max() <= 1e-4


def test_ensemble_onnx_file_and_onnx_runtime_averaging_match_the_keras_ensemble(models, real, tmp_path):
    (m0, p0), (m1, p1) = models
    ens = ensemble([m0, m1])
    x = tiles(real, 92)
    expect = prob(keras.ops.convert_to_numpy(ens(x)))
    export_onnx(ens, tmp_path / "ens.onnx")
    got_file = prob(session(tmp_path / "ens.onnx").run(None, {"grey": x})[0])
    got_sessions = prob(OnnxModel([p0["onnx"], p1["onnx"]], np.dtype("uint8")).predict_on_batch(x))
    assert np.abs(got_file - expect).max() <= 1e-4 and np.abs(got_sessions - expect).max() <= 1e-4
    members = [prob(keras.ops.convert_to_numpy(m(x))) for m in (m0, m1)]
    assert np.abs(members[0] - members[1]).max() > 0.01  # the members really differ


def test_tf2onnx_fallback_when_keras_export_fails(models, real, tmp_path, monkeypatch, caplog):
    model = models[0][0]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(type(model), "export", broken)
    export_onnx(model, tmp_path / "m.onnx")
    assert "converting with tf2onnx directly" in caplog.text
    x = tiles(real, 92)
    got = prob(session(tmp_path / "m.onnx").run(None, {"grey": x})[0])
    assert np.abs(got - prob(keras.ops.convert_to_numpy(model(x)))).max() <= 1e-4


def test_unet_predict_engine_onnx_matches_keras_and_imports_no_framework(models, real, tmp_path):
    pairs = models
    src = tmp_path / "slice.tif"
    tifffile.imwrite(src, real[0], photometric="minisblack")
    both = ["--tta", "--batch-size", "16", "--models"]
    main(["predict", str(src), str(tmp_path / "keras.tif"), *both, *(p["keras"] for _, p in pairs)])
    argv = ["predict", str(src), str(tmp_path / "onnx.tif"), "--engine", "onnx", *both, *(p["onnx"] for _, p in pairs)]
    code = (
        "import sys; from unet.cli import main; main(sys.argv[1:]); "
        "print([m for m in ('tensorflow', 'jax', 'keras') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout  # neither TensorFlow, JAX nor Keras was imported
    got, expect = tifffile.imread(tmp_path / "onnx.tif"), tifffile.imread(tmp_path / "keras.tif")
    assert got.shape == expect.shape == (512, 512) and np.abs(got - expect).max() <= 1e-4


def test_onnx_engine_errors_are_one_line(models, tmp_path, capsys):
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, np.zeros((100, 100), np.uint8))
    (tmp_path / "junk.onnx").write_text("not a model\n")
    for model, named in ((tmp_path / "junk.onnx", "junk.onnx: not an ONNX model"), (tmp_path / "no.onnx", "no such")):
        with pytest.raises(SystemExit):
            main(["predict", str(src), str(tmp_path / "o.tif"), "--engine", "onnx", "--models", str(model)])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
        assert not (tmp_path / "o.tif").exists()


# what takes the model out of Keras: ONNX, the bioimage.io package (and the pydantic its spec needs), OME-Zarr,
# and the reader the tests check our OME-Zarr with
ELSEWHERE = ("onnx", "onnxruntime", "tf2onnx", "bioimageio.core", "bioimageio.spec", "pydantic", "ome-zarr", "zarr")


def test_packages_of_the_model_elsewhere_are_pinned_in_pyproject_and_both_locks_and_installed_at_those_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pinned = {
        name.replace(".", "-"): v for name, v in (d.split("==") for d in deps) if name in (*ELSEWHERE, "ngff-zarr")
    }
    assert len(pinned) == len(ELSEWHERE) + 1, pinned
    for lock in ("constraints.txt", "constraints-gpu.txt"):
        text = (ROOT / lock).read_text()
        assert {k: re.search(rf"^{k}==(\S+)$", text, re.M)[1] for k in pinned} == pinned, lock
    assert {k: version(k) for k in pinned} == pinned
