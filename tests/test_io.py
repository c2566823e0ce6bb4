import numpy as np
import pytest
import tifffile
from PIL import Image

from unet.io import DataError, iter_slices, read_stack, slice_files, stack_info


def _write_slices(folder, stack, suffix):
    folder.mkdir()
    for i, page in enumerate(stack):  # unpadded numbers: only a natural sort gets 2 before 10
        name = folder / f"slice_{i}{suffix}"
        Image.fromarray(page).save(name) if suffix == ".png" else tifffile.imwrite(name, page)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_slice_directory_reads_like_the_stack(isbi, tmp_path, suffix):
    stack = tifffile.imread(isbi / "train-labels.tif")[:12]
    _write_slices(tmp_path / "slices", stack, suffix)
    (tmp_path / "slices" / "notes.txt").write_text("not an image")
    assert [p.name for p in slice_files(tmp_path / "slices")][:3] == [
        f"slice_0{suffix}",
        f"slice_1{suffix}",
        f"slice_2{suffix}",
    ]
    np.testing.assert_array_equal(read_stack(tmp_path / "slices"), stack)
    np.testing.assert_array_equal(np.stack(list(iter_slices(tmp_path / "slices"))), stack)
    info = stack_info(tmp_path / "slices")
    assert (info.slices, info.height, info.width, info.dtype) == (12, 512, 512, np.uint8)


def test_pages_of_a_tiff_are_yielded_one_at_a_time(isbi):
    pages = iter_slices(isbi / "train-volume.tif")
    first = next(pages)
    assert first.shape == (512, 512)
    np.testing.assert_array_equal(np.stack([first, *pages]), read_stack(isbi / "train-volume.tif"))
    assert stack_info(isbi / "train-volume.tif").slices == 30


def test_single_page_uint16_tiff(tmp_path):
    page = np.arange(6 * 10, dtype=np.uint16).reshape(6, 10) * 1000
    tifffile.imwrite(tmp_path / "one.tif", page)
    assert [p.shape for p in iter_slices(tmp_path / "one.tif")] == [(6, 10)]
    assert read_stack(tmp_path / "one.tif").dtype == np.uint16


def test_bad_slice_directories_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: directory holds no slice images"):
        read_stack(tmp_path / "empty")
    _write_slices(tmp_path / "mixed", np.zeros((2, 8, 8), np.uint8), ".png")
    Image.fromarray(np.zeros((8, 9), np.uint8)).save(tmp_path / "mixed" / "slice_2.png")
    with pytest.raises(DataError, match=r"mixed/slice_2.png: slice of 8x9 uint8; the first is 8x8 uint8"):
        read_stack(tmp_path / "mixed")
    _write_slices(tmp_path / "broken", np.zeros((2, 8, 8), np.uint8), ".png")
    (tmp_path / "broken" / "slice_1.png").write_bytes((tmp_path / "broken" / "slice_1.png").read_bytes()[:30])
    with pytest.raises(DataError, match=r"broken/slice_1.png: unreadable or truncated PNG") as err:
        read_stack(tmp_path / "broken")
    assert "\n" not in str(err.value)


def test_a_single_png_is_a_one_slice_stack(tmp_path):
    page = (np.arange(6 * 10).reshape(6, 10) * 4).astype(np.uint8)
    Image.fromarray(page).save(tmp_path / "one.png")
    info = stack_info(tmp_path / "one.png")
    assert (info.slices, info.height, info.width, info.dtype) == (1, 6, 10, np.uint8)
    [only] = list(iter_slices(tmp_path / "one.png"))
    np.testing.assert_array_equal(only, page)
    np.testing.assert_array_equal(read_stack(tmp_path / "one.png"), page[None])


def test_a_stage_refuses_an_output_that_is_one_of_its_inputs_before_any_work(tmp_path, capsys):
    import argparse

    from unet.stages import _cli

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train-volume.tif").write_bytes(b"the user's data")
    ran = []
    for out in (raw, raw / "folds.json", tmp_path / "params.yaml"):
        args = argparse.Namespace(params=str(tmp_path / "params.yaml"), raw=str(raw), out=str(out))
        with pytest.raises(SystemExit) as exc:
            _cli.run("split", lambda a, c: ran.append(a), args, outputs=("out",))
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"split: error: {out}: output --out would overwrite the input"), err
    assert not ran and (raw / "train-volume.tif").read_bytes() == b"the user's data"
