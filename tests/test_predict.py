"""``unet predict``: streamed output against the whole-stack algorithm, masks, ensembles, TTA, progress lines,
slice folders, and one-line errors that leave no output."""

import logging
import math

import keras
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import synthetic
from unet.cli import main
from unet.config import ModelConfig
from unet.intensity import UINT8, intensities, with_intensity
from unet.io import DataError, StackInfo
from unet.model import build_unet
from unet.predict import load_model, needs_bigtiff
from unet.tiling import _dihedral, iter_predictions, predict_slices

TINY_MODEL = ModelConfig(base_filters=8, depth=3, tile=92, dropout=0.0)  # 92 -> 52 px output tiles


def old_whole_stack(unet: keras.Model, images: np.ndarray, batch_size: int, tta: bool) -> np.ndarray:
    """The whole-stack algorithm this module replaced: ``x / 255`` on the host, one slice's tiles per batch,
    float64 accumulation."""
    tile, out = int(unet.input_shape[1]), int(unet.output_shape[1])
    margin, transforms = (tile - out) // 2, range(8) if tta else range(1)
    unit = images.astype(np.float32) / 255.0
    acc = np.zeros(unit.shape, np.float64)
    for k in transforms:
        for i, image in enumerate(unit):
            view = np.ascontiguousarray(_dihedral(image, k))
            h, w = view.shape
            ny, nx = math.ceil(h / out), math.ceil(w / out)
            pad = ((margin, margin + ny * out - h), (margin, margin + nx * out - w))
            padded = np.pad(view, pad, mode="symmetric")
            corners = [(ty * out, tx * out) for ty in range(ny) for tx in range(nx)]
            result = np.empty((ny * out, nx * out), np.float32)
            for start in range(0, len(corners), batch_size):
                chunk = corners[start : start + batch_size]
                batch = np.zeros((batch_size, tile, tile, 1), np.float32)
                for j, (y, x) in enumerate(chunk):
                    batch[j, ..., 0] = padded[y : y + tile, x : x + tile]
                logits = np.asarray(unet.predict_on_batch(batch), np.float32)[: len(chunk)]
                for (y, x), p in zip(chunk, 1.0 / (1.0 + np.exp(logits[..., 0] - logits[..., 1])), strict=True):
                    result[y : y + out, x : x + out] = p
            acc[i] += _dihedral(result[:h, :w], k, inverse=True)
    return (acc / len(transforms)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny seeded models saved as the train stage saves them, and a 3-slice uint8 stack as TIFF and folder."""
    d = tmp_path_factory.mktemp("predict")
    unets = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        unets.append(build_unet(TINY_MODEL))
        with_intensity(unets[-1], UINT8).save(d / f"m{seed}.keras")
    images = synthetic(3, 60)[0]
    tifffile.imwrite(d / "in.tif", images, photometric="minisblack")
    (d / "slices").mkdir()
    for i, im in enumerate(images):  # natural order: s2 before s10
        Image.fromarray(im).save(d / "slices" / f"s{[2, 10, 11][i]}.png")
    return d, unets, images


def test_streamed_probabilities_masks_folder_input_and_progress_lines(setup, caplog):
    d, unets, images = setup
    main(["predict", str(d / "in.tif"), str(d / "p.tif"), "--models", str(d / "m0.keras")])
    prob = tifffile.imread(d / "p.tif")
    assert prob.dtype == np.float32 and prob.shape == images.shape and prob.min() >= 0 and prob.max() <= 1
    old = old_whole_stack(unets[0], images, 8, tta=False)
    if keras.backend.backend() == "tensorflow":  # the in-graph x/255 is exact there (XLA on JAX: 1 ulp)
        np.testing.assert_array_equal(prob, old)
    np.testing.assert_allclose(prob, old, atol=1e-6)
    with caplog.at_level(logging.INFO, logger="unet.predict"):  # stderr is not a terminal under pytest
        args = ["--models", str(d / "m0.keras"), "--threshold", "0.5", "--log-every", "0"]
        main(["predict", str(d / "slices"), str(d / "mask.tif"), *args])
    mask = tifffile.imread(d / "mask.tif")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask, (prob > 0.5).astype(np.uint8) * 255)  # folder == TIFF, masks == probs
    lines = [r.getMessage() for r in caplog.records if r.name == "unet.predict"]
    assert [line.split(",")[0] for line in lines] == ["1/3 slices", "2/3 slices", "3/3 slices"]
    assert all(" img/s, ETA " in line for line in lines) and lines[-1].endswith("ETA 0:00:00")


def test_ensemble_is_the_mean_of_its_members_and_tta_matches_the_old_path(setup):
    d, unets, images = setup
    models = [str(d / "m0.keras"), str(d / "m1.keras")]
    main(["predict", str(d / "in.tif"), str(d / "ens.tif"), "--tta", "--batch-size", "4", "--models", *models])
    members = [old_whole_stack(u, images, 4, tta=True) for u in unets]
    np.testing.assert_allclose(tifffile.imread(d / "ens.tif"), (members[0] + members[1]) / 2, atol=2e-6)
    assert np.abs(members[0] - members[1]).max() > 0.01  # the members really differ


def test_tta_on_a_dihedrally_symmetric_slice_averages_the_inverse_transforms(setup):
    _, unets, images = setup
    model = with_intensity(unets[0], UINT8)
    a = images[0].astype(np.float32)
    a = a + a.T
    sym = (a + a[::-1] + a[:, ::-1] + a[::-1, ::-1]) / 8  # invariant under all 8 flips/rotations
    assert all(np.array_equal(_dihedral(sym, k), sym) for k in range(8))
    plain = predict_slices(model, sym[None])[0]
    tta = predict_slices(model, sym[None], tta=True)[0]
    expect = np.mean([_dihedral(plain, k, inverse=True) for k in range(8)], axis=0)
    np.testing.assert_allclose(tta, expect, atol=1e-6)
    assert all(np.allclose(_dihedral(tta, k), tta, atol=1e-6) for k in range(8))
    assert np.abs(tta - plain).max() > 1e-3  # the U-Net is not equivariant: TTA changed something


class Recorder:
    """A model that records the batch shape of each call."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.input_shape, self.output_shape = model.input_shape, model.output_shape

    def predict_on_batch(self, batch):
        self.calls.append(batch.shape)
        return self.model.predict_on_batch(batch)


def test_tiles_are_batched_across_slices_and_slices_are_read_lazily(setup):
    _, unets, images = setup
    model = Recorder(with_intensity(unets[0], UINT8))
    pulled = []

    def slices():
        for im in images:
            pulled.append(1)
            yield im

    stream = iter_predictions(model, slices(), batch_size=8)
    first = next(stream)
    assert len(pulled) == 2  # 4 tiles a slice: the first batch of 8 holds slices 0 and 1, not 2
    rest = list(stream)
    # 3 slices x 4 tiles = 12 tiles: 2 calls (one slice per batch would take 3)
    assert model.calls == [(8, 92, 92, 1)] * 2
    np.testing.assert_array_equal(np.stack([first, *rest]), predict_slices(model, images, batch_size=8))


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("missing-model", "nope.keras"),
        ("not-a-model", "junk.keras"),
        ("not-a-tiff", "junk.tif"),
        ("mid-stream", "s2.png"),
    ],
)
def test_bad_model_or_input_is_a_one_line_error_and_leaves_no_output(setup, tmp_path, capsys, case, named):
    d, _, images = setup
    (tmp_path / "junk.keras").write_text("not a model\n")
    (tmp_path / "junk.tif").write_text("not a TIFF\n")
    (tmp_path / "mixed").mkdir()  # the second slice fails after the first was written (4 tiles a batch)
    Image.fromarray(images[0]).save(tmp_path / "mixed" / "s1.png")
    Image.fromarray(images[1, :50]).save(tmp_path / "mixed" / "s2.png")
    inp = {"not-a-tiff": tmp_path / "junk.tif", "mid-stream": tmp_path / "mixed"}.get(case, d / "in.tif")
    model = {"missing-model": tmp_path / "nope.keras", "not-a-model": tmp_path / "junk.keras"}.get(case)
    out = tmp_path / "out" / "p.tif"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(inp), str(out), "--batch-size", "4", "--models", str(model or d / "m0.keras")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unet predict: error: ") and named in err[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_bigtiff_is_chosen_from_the_stack_size_up_front():
    assert not needs_bigtiff(StackInfo(400, 2048, 2048, np.dtype("uint8")), np.dtype("uint8"))  # 1.7 GB
    assert needs_bigtiff(StackInfo(400, 2048, 2048, np.dtype("uint8")), np.dtype("float32"))  # 6.7 GB


def test_a_model_saved_without_an_intensity_map_reads_uint8_only(setup, tmp_path, caplog):
    _, unets, _ = setup
    unets[0].save(tmp_path / "old.keras")  # as train saved models before maps were stored
    with caplog.at_level(logging.WARNING, logger="unet.predict"):
        assert intensities(load_model(tmp_path / "old.keras", np.dtype("uint8"))) == [UINT8]
    assert "no intensity map" in caplog.text
    with pytest.raises(DataError, match=r"old\.keras: model stores no intensity map"):
        load_model(tmp_path / "old.keras", np.dtype("uint16"))


@pytest.mark.parametrize("case", ["same-path", "hard-link", "symlink", "inside-input-folder", "model", "directory"])
def test_an_output_that_would_overwrite_an_input_or_model_is_refused_before_any_work(setup, tmp_path, capsys, case):
    d, _, _ = setup
    stack, folder, model = tmp_path / "in.tif", tmp_path / "slices", tmp_path / "m.keras"
    for src, dst in ((d / "in.tif", stack), (d / "m0.keras", model)):
        dst.write_bytes(src.read_bytes())
    folder.mkdir()
    (folder / "s1.png").write_bytes((d / "slices" / "s2.png").read_bytes())
    (tmp_path / "link.tif").hardlink_to(stack)
    (tmp_path / "sym.tif").symlink_to(stack)
    (tmp_path / "outdir").mkdir()
    inp, out = {
        "same-path": (stack, stack),
        "hard-link": (stack, tmp_path / "link.tif"),
        "symlink": (stack, tmp_path / "sym.tif"),
        "inside-input-folder": (folder, folder / "p.tif"),
        "model": (stack, model),
        "directory": (stack, tmp_path / "outdir"),
    }[case]
    before = {p: p.read_bytes() for p in (stack, model, folder / "s1.png")}
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(inp), str(out), "--models", str(model)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unet predict: error: {out}: "), err
    assert {p: p.read_bytes() for p in before} == before  # nothing the user had was touched
    assert sorted(p.name for p in folder.iterdir()) == ["s1.png"] and not any((tmp_path / "outdir").iterdir())
