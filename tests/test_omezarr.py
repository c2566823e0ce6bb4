"""OME-Zarr in and out of ``unet predict`` and the download stage: NGFF 0.4 and 0.5 stores written without
ome-zarr-py (zarr-python and the spec's metadata) read as the TIFF of the same pixels; what we write read back
with ngff-zarr (a library we do not write with); labels added into the input without touching its image; bad
stores as one-line errors that leave no output; the ONNX engine on OME-Zarr without a framework import."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import ngff_zarr
import numpy as np
import pytest
import tifffile
import zarr

from tests.conftest import ROOT
from unet.cli import main
from unet.config import ModelConfig
from unet.intensity import UINT8, with_intensity
from unet.model import build_unet

TINY_MODEL = ModelConfig(base_filters=4, depth=3, tile=92, dropout=0.0)  # 92 -> 52 px output tiles
AXES = {
    "z": {"name": "z", "type": "space", "unit": "micrometer"},
    "y": {"name": "y", "type": "space", "unit": "micrometer"},
    "x": {"name": "x", "type": "space", "unit": "micrometer"},
    "c": {"name": "c", "type": "channel"},
    "t": {"name": "t", "type": "time", "unit": "second"},
}
SCALE = {"z": 0.05, "y": 0.004, "x": 0.004, "c": 1.0, "t": 1.0}


def ngff_store(
    path: Path,
    arr: np.ndarray,
    axes: str,
    version: str,
    chunks: tuple[int, ...] | None = None,
    top: list[dict] | None = None,
) -> Path:
    """An NGFF image written with zarr-python and the metadata of the spec's own examples (not ome-zarr-py, which
    we write with): level 0 at ``s0`` plus a 2x-downsampled level ``s1`` that must be ignored; ``top``: the
    transformations of the whole multiscales (applied after each level's)."""
    v3 = version == "0.5"
    group = zarr.open_group(str(path), mode="w", zarr_format=3 if v3 else 2)
    datasets = []
    for level, factor in (("s0", 1), ("s1", 2)):
        plane = [i for i, a in enumerate(axes) if a in "yx"]
        data = arr[tuple(slice(None, None, factor) if i in plane else slice(None) for i in range(arr.ndim))]
        extra = {"dimension_names": list(axes)} if v3 else {}
        level_chunks = chunks or tuple(n if i in plane else 1 for i, n in enumerate(data.shape))
        a = group.create_array(level, shape=data.shape, chunks=level_chunks, dtype=data.dtype, **extra)
        if data.size:
            a[...] = data
        scale = [SCALE[ax] * (factor if ax in "yx" else 1) for ax in axes]
        datasets.append({"path": level, "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ms = {"axes": [AXES[a] for a in axes], "datasets": datasets, "name": "em"}
    if top:
        ms["coordinateTransformations"] = top
    if v3:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        group.attrs["multiscales"] = [{"version": "0.4", **ms}]
    return path


def tree(path: Path, skip: str = "labels") -> dict[str, str]:
    """sha256 of every file under ``path`` except those under ``path/skip``."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.relative_to(path).parts[0] != skip
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, isbi):
    """A tiny seeded model saved as train saves it, and a 3-slice crop of the real ISBI stack."""
    d = tmp_path_factory.mktemp("omezarr")
    keras.utils.set_random_seed(0)
    model = with_intensity(build_unet(TINY_MODEL), UINT8)
    model.save(d / "m.keras")
    images = tifffile.imread(isbi / "train-volume.tif")[:3, 100:160, 200:270]  # 60x70: 4 tiles a slice
    return d, model, images


def predict(*args: str | Path, model: Path) -> None:
    main(["predict", *map(str, args), "--models", str(model), "--batch-size", "4"])


CASES = [  # (version, dtype, axes): z-stacks and single 2-D images, singleton t/c axes dropped
    ("0.4", "uint8", "zyx"),
    ("0.5", "uint8", "zyx"),
    ("0.4", "uint16", "czyx"),
    ("0.5", "float32", "tzyx"),
    ("0.5", "uint16", "yx"),
    ("0.4", "float32", "yx"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # uint16 grey values through a uint8 map
@pytest.mark.parametrize(("version", "dtype", "axes"), CASES)
def test_an_ngff_image_predicts_as_the_tiff_of_its_pixels_and_writes_back_its_axes_and_scale(
    setup, tmp_path, version, dtype, axes
):
    d, _, images = setup
    pixels = (images.astype(np.float32) * (257 if dtype == "uint16" else 1 / 255 if dtype == "float32" else 1)).astype(
        dtype
    )
    pixels = pixels if "z" in axes else pixels[0]
    arr = pixels.reshape((1,) * (len(axes) - pixels.ndim) + pixels.shape)
    store = ngff_store(tmp_path / "in.ome.zarr", arr, axes, version)
    assert np.array_equal(np.asarray(ngff_zarr.from_ngff_zarr(str(store)).images[0].data), arr)  # a valid store
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric="minisblack")
    predict(tmp_path / "in.tif", tmp_path / "p.tif", model=d / "m.keras")
    predict(store, tmp_path / "p.ome.zarr", model=d / "m.keras")
    expect = tifffile.imread(tmp_path / "p.tif")
    back = ngff_zarr.from_ngff_zarr(str(tmp_path / "p.ome.zarr"))
    image = back.images[0]
    assert len(back.images) == 1 and image.dims == tuple(axes)  # one level, the input's axes
    assert image.scale == {a: SCALE[a] for a in axes} and image.axes_units["x"] == "micrometer"
    got = np.asarray(image.data)
    assert got.dtype == np.float32 and got.shape == arr.shape
    np.testing.assert_array_equal(got.reshape(expect.shape), expect)  # exactly the TIFF path's output
    meta = json.loads((tmp_path / "p.ome.zarr" / ("zarr.json" if version == "0.5" else ".zattrs")).read_text())
    assert (meta["attributes"]["ome"]["version"] if version == "0.5" else meta["multiscales"][0]["version"]) == version
    chunks = zarr.open_array(str(tmp_path / "p.ome.zarr" / "0"), mode="r").chunks
    assert chunks == tuple(n if a in "yx" else 1 for a, n in zip(axes, arr.shape, strict=True))  # a z-slice a chunk


def test_tiff_to_ome_zarr_probabilities_and_labels_read_back_with_ngff_zarr(setup, tmp_path):
    d, _, images = setup
    tifffile.imwrite(tmp_path / "in.tif", images, photometric="minisblack")
    predict(tmp_path / "in.tif", tmp_path / "p.tif", model=d / "m.keras")
    predict(tmp_path / "in.tif", tmp_path / "p.zarr", "--threshold", "0.5", model=d / "m.keras")
    predict(tmp_path / "in.tif", tmp_path / "p.zarr", model=d / "m.keras")  # our own earlier output: replaced
    predict(tmp_path / "in.tif", tmp_path / "mask.ome.zarr", "--threshold", "0.5", model=d / "m.keras")
    prob = tifffile.imread(tmp_path / "p.tif")
    image = ngff_zarr.from_ngff_zarr(str(tmp_path / "p.zarr")).images[0]
    assert image.dims == ("z", "y", "x") and image.scale == {"z": 1.0, "y": 1.0, "x": 1.0}
    assert image.axes_units in (None, {"z": None, "y": None, "x": None})  # no unit invented
    np.testing.assert_array_equal(np.asarray(image.data), prob)
    mask = ngff_zarr.from_ngff_zarr(str(tmp_path / "mask.ome.zarr")).images[0]
    assert np.asarray(mask.data).dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(mask.data), (prob > 0.5).astype(np.uint8))  # NGFF labels: 0/1
    label = zarr.open_group(str(tmp_path / "mask.ome.zarr"), mode="r").attrs["ome"]["image-label"]
    assert label["properties"][0]["label-value"] == 1 and "foreground" in label["properties"][0]["class"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_into_input_leave_the_image_untouched_and_are_listed(setup, tmp_path, capsys, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    d, _, images = setup
    store = ngff_store(tmp_path / "in.ome.zarr", images, "zyx", version)
    before = tree(store)
    predict(store, "--threshold", "0.5", "--labels-into-input", model=d / "m.keras")
    assert tree(store) == before  # the image's arrays and metadata, byte for byte
    tifffile.imwrite(tmp_path / "in.tif", images, photometric="minisblack")
    predict(tmp_path / "in.tif", tmp_path / "mask.tif", "--threshold", "0.5", model=d / "m.keras")
    labels = zarr.open_group(str(store / "labels"), mode="r").attrs
    assert (labels["ome"] if version == "0.5" else labels)["labels"] == ["unet"]
    got = ngff_zarr.from_ngff_zarr(str(store / "labels" / "unet")).images[0]
    assert got.dims == ("z", "y", "x") and got.scale == {a: SCALE[a] for a in "zyx"}
    np.testing.assert_array_equal(np.asarray(got.data), tifffile.imread(tmp_path / "mask.tif") // 255)
    nodes = list(Reader(parse_url(str(store)))())  # ome-zarr-py's reader finds the image and its label
    assert any(isinstance(s, Label) for n in nodes for s in n.specs)
    assert not [p for p in (store / "labels").iterdir() if p.name.startswith(".unet.")]  # no temporary left
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a second run would overwrite: refused
        predict(store, "--threshold", "0.5", "--labels-into-input", model=d / "m.keras")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels/unet exists" in err[0] and tree(store) == before


def _bad_stores(tmp: Path, images: np.ndarray) -> dict[str, tuple[Path, str]]:
    plain = zarr.open_group(str(tmp / "plain.zarr"), mode="w")
    plain.create_array("0", shape=images.shape, dtype=images.dtype)
    rgb = np.repeat(images[None], 3, axis=0)
    rgb[1] += 1  # really colour
    corrupt = ngff_store(tmp / "corrupt.ome.zarr", images, "zyx", "0.5")
    (corrupt / "s0" / "c" / "2" / "0" / "0").write_bytes(b"not a zstd frame")
    return {
        "no multiscales": (tmp / "plain.zarr", "no OME-Zarr multiscales metadata"),
        "rgb": (ngff_store(tmp / "rgb.ome.zarr", rgb, "czyx", "0.4"), "RGB channel axis c"),
        "3-d chunks": (ngff_store(tmp / "chunk.ome.zarr", images, "zyx", "0.5", (2, 60, 70)), "span 2 z-slices"),
        "empty": (ngff_store(tmp / "empty.ome.zarr", images[:0], "zyx", "0.4"), "empty image"),
        "not zarr": ((tmp / "x.zarr").mkdir() or tmp / "x.zarr", "not a zarr store"),
        "corrupt chunk": (corrupt, "unreadable chunk at z-slice 2"),
    }


@pytest.mark.parametrize("case", ["no multiscales", "rgb", "3-d chunks", "empty", "not zarr", "corrupt chunk"])
@pytest.mark.parametrize("out", ["p.ome.zarr", "p.tif", "labels"])
def test_a_bad_store_is_one_line_naming_it_and_leaves_no_output(setup, tmp_path, capsys, case, out):
    d, _, images = setup
    store, expect = _bad_stores(tmp_path, images)[case]
    before = tree(store, skip="")
    dest = tmp_path / "out" / out
    args = ["--threshold", "0.5", "--labels-into-input"] if out == "labels" else [dest]
    with pytest.raises(SystemExit) as exc:
        predict(store, *args, model=d / "m.keras")
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unet predict: error: {store}") and expect in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert tree(store, skip="") == before and not (store / "labels").exists()


def test_an_existing_output_is_replaced_only_when_unet_predict_wrote_it(setup, tmp_path, capsys):
    d, _, images = setup
    tifffile.imwrite(tmp_path / "in.tif", images, photometric="minisblack")
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "notes.txt").write_text("my notes\n")  # a folder that happens to end in .zarr
    ngff_store(tmp_path / "theirs.ome.zarr", images, "zyx", "0.5")  # somebody else's image
    (tmp_path / "file.zarr").write_text("a file\n")
    ours = tmp_path / "ours.ome.zarr"
    predict(tmp_path / "in.tif", ours, model=d / "m.keras")
    predict(ours, "--threshold", "0.5", "--labels-into-input", model=d / "m.keras")  # labels added: now theirs
    capsys.readouterr()
    for dest in (tmp_path / "mine.zarr", tmp_path / "theirs.ome.zarr", tmp_path / "file.zarr", ours):
        before = tree(dest, skip="") if dest.is_dir() else dest.read_text()
        with pytest.raises(SystemExit):
            predict(tmp_path / "in.tif", dest, model=d / "m.keras")
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not an OME-Zarr image unet predict wrote" in err[-1], err
        assert (tree(dest, skip="") if dest.is_dir() else dest.read_text()) == before, dest


def test_multiscales_transformations_are_kept_in_what_we_write(setup, tmp_path):
    d, _, images = setup
    top = [{"type": "scale", "scale": [2.0, 0.5, 0.5]}, {"type": "translation", "translation": [1.0, 10.0, 20.0]}]
    store = ngff_store(tmp_path / "in.ome.zarr", images, "zyx", "0.4", top=top)
    predict(store, tmp_path / "p.ome.zarr", model=d / "m.keras")
    predict(store, "--threshold", "0.5", "--labels-into-input", model=d / "m.keras")
    for written in (tmp_path / "p.ome.zarr", store / "labels" / "unet"):
        image = ngff_zarr.from_ngff_zarr(str(written)).images[0]
        assert image.scale == pytest.approx({"z": 0.1, "y": 0.002, "x": 0.002}), written  # level 0's, then top's
        assert image.translation == pytest.approx({"z": 1.0, "y": 10.0, "x": 20.0}), written


def test_labels_left_unlisted_by_a_killed_run_are_replaced_and_anybody_elses_refused(setup, tmp_path, capsys):
    d, _, images = setup
    store = ngff_store(tmp_path / "in.ome.zarr", images, "zyx", "0.5")
    predict(store, "--threshold", "0.5", "--labels-into-input", model=d / "m.keras")
    done = tree(store / "labels" / "unet", skip="")
    labels = zarr.open_group(str(store / "labels"), mode="a")
    labels.attrs["ome"] = {**labels.attrs["ome"], "labels": []}  # killed after the rename, before the listing
    predict(store, "--threshold", "0.5", "--labels-into-input", model=d / "m.keras")
    assert zarr.open_group(str(store / "labels"), mode="r").attrs["ome"]["labels"] == ["unet"]
    assert tree(store / "labels" / "unet", skip="") == done
    assert [p.name for p in tmp_path.iterdir()] == ["in.ome.zarr"]  # no temporary folder left beside the store
    capsys.readouterr()
    (store / "labels" / "cells").mkdir()  # somebody else's, unlisted
    (store / "labels" / "cells" / "notes.txt").write_text("mine\n")
    with pytest.raises(SystemExit):
        predict(store, "--threshold", "0.5", "--labels-into-input", "--label-name", "cells", model=d / "m.keras")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels/cells exists" in err[0], err
    assert (store / "labels" / "cells" / "notes.txt").read_text() == "mine\n"


def test_output_names_and_labels_into_input_misuse_are_one_line_errors(setup, tmp_path, capsys):
    d, _, images = setup
    store = ngff_store(tmp_path / "in.ome.zarr", images, "zyx", "0.5")
    tifffile.imwrite(tmp_path / "in.tif", images, photometric="minisblack")
    cases = {
        "output must be a .tif/.tiff file or a .zarr/.ome.zarr": (store, tmp_path / "p.n5"),
        "needs --threshold": (store, "--labels-into-input"),
        "needs an OME-Zarr input": (tmp_path / "in.tif", "--labels-into-input", "--threshold", "0.5"),
        "give no OUT": (store, tmp_path / "p.tif", "--labels-into-input", "--threshold", "0.5"),
        "would overwrite the input": (store, store / "p.ome.zarr"),
    }
    for expect, args in cases.items():
        with pytest.raises(SystemExit):
            predict(*args, model=d / "m.keras")
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], (expect, err)
    assert not (tmp_path / "p.n5").exists() and not (store / "labels").exists()


def test_download_from_ome_zarr_in_local_dir_writes_the_same_tiffs(isbi, tmp_path):
    from tests.test_download import FILES, catalogue, fast
    from unet.download import DownloadError, download
    from unet.io import pixel_sha256

    local = tmp_path / "local"
    local.mkdir()
    for name, version in zip(FILES, ("0.4", "0.5", "0.5"), strict=True):
        ngff_store(local / f"{Path(name).stem}.ome.zarr", tifffile.imread(isbi / name), "zyx", version)
    prov = download(fast(), tmp_path / "raw", local_dir=str(local))
    for name in FILES:
        got = tifffile.imread(tmp_path / "raw" / name)
        assert pixel_sha256(got) == catalogue().pixel_sha256[name]
        np.testing.assert_array_equal(got, tifffile.imread(isbi / name))
    assert prov["train-labels.tif"]["source"] == f"{local}/train-labels.ome.zarr/"
    shutil.copy(isbi / "test-volume.tif", local)  # both a TIFF and an OME-Zarr image: ambiguous
    with pytest.raises(DownloadError, match=r"both test-volume.tif and test-volume.ome.zarr/ exist; keep one"):
        download(fast(), tmp_path / "raw2", local_dir=str(local))
    (local / "test-volume.tif").unlink()
    store = local / "test-volume.ome.zarr"
    ngff_store(store, tifffile.imread(isbi / "test-volume.tif"), "zyx", "0.5", chunks=(5, 512, 512))
    with pytest.raises(DownloadError, match=rf"{store}: image of shape .* span 5 z-slices"):  # the same one line
        download(fast(), tmp_path / "raw2", local_dir=str(local))
    assert not (tmp_path / "raw2").exists()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="ONNX export needs TensorFlow")
def test_onnx_engine_reads_and_writes_ome_zarr_without_a_framework(setup, tmp_path):
    from unet.export import export

    d, model, images = setup
    paths = export(model, tmp_path / "m")
    store = ngff_store(tmp_path / "in.ome.zarr", images, "zyx", "0.5")
    predict(store, tmp_path / "keras.ome.zarr", model=d / "m.keras")
    argv = ["predict", str(store), str(tmp_path / "onnx.ome.zarr"), "--engine", "onnx", "--models", paths["onnx"]]
    code = (
        "import sys; from unet.cli import main; main(sys.argv[1:]); "
        "print([m for m in ('tensorflow', 'jax', 'keras') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout  # neither TensorFlow, JAX nor Keras was imported
    got = np.asarray(ngff_zarr.from_ngff_zarr(str(tmp_path / "onnx.ome.zarr")).images[0].data)
    expect = np.asarray(ngff_zarr.from_ngff_zarr(str(tmp_path / "keras.ome.zarr")).images[0].data)
    assert got.shape == images.shape and np.abs(got - expect).max() <= 1e-4
