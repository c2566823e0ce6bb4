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


def _layouts(tmp_path, grey):
    """One file per channel layout a PNG or TIFF can hold, each of the grey slices ``grey`` (N, H, W) or not."""
    g = grey[0]
    rgb = np.stack([g, g, g], -1)
    files = {}

    def png(name, arr, mode=None):
        Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
        (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(tmp_path / name)
        files[name] = tmp_path / name

    png("grey.png", g)
    png("grey-alpha.png", np.stack([g, np.full_like(g, 255)], -1))
    png("rgb.png", rgb)
    png("rgba.png", np.concatenate([rgb, np.full_like(g, 255)[..., None]], -1))
    Image.fromarray(g).convert("P").save(tmp_path / "palette.png")  # a grey palette
    files["palette.png"] = tmp_path / "palette.png"
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    files["grey16.png"] = tmp_path / "grey16.png"
    tifffile.imwrite(tmp_path / "rgb-last.tif", np.stack([grey] * 3, -1), photometric="rgb")
    files["rgb-last.tif"] = tmp_path / "rgb-last.tif"
    hyper = np.stack([grey, grey], 1)  # ZCYX, 2 channels, one page each
    tifffile.imwrite(tmp_path / "channels-first.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
    files["channels-first.tif"] = tmp_path / "channels-first.tif"
    return files


def test_every_channel_layout_of_grey_slices_reads_as_the_grey_slices(tmp_path):
    grey = (np.arange(3 * 6 * 10).reshape(3, 6, 10) * 2 % 251).astype(np.uint8)
    for name, path in _layouts(tmp_path, grey).items():
        want = grey if name.endswith(".tif") else grey[:1]
        if name == "grey16.png":
            want = want.astype(np.uint16) * 257
        info = stack_info(path)
        assert (info.slices, info.height, info.width, info.dtype) == (*want.shape, want.dtype), name
        np.testing.assert_array_equal(read_stack(path), want, err_msg=name)
        np.testing.assert_array_equal(np.stack(list(iter_slices(path))), want, err_msg=name)


@pytest.mark.parametrize(
    ("name", "arr", "expect"),
    [
        (
            "colour.png",
            np.stack([np.zeros((6, 10)), np.ones((6, 10)), np.zeros((6, 10))], -1),
            "colour channels differ",
        ),
        ("transparent.png", np.stack([np.zeros((6, 10)), np.eye(6, 10) * 255], -1), "alpha channel is not uniform"),
        (
            "colour.tif",
            np.stack([np.zeros((2, 6, 10)), np.ones((2, 6, 10)), np.zeros((2, 6, 10))], -1),
            "colour channels differ",
        ),
        ("five.tif", np.zeros((2, 5, 6, 10)), "5 channels"),
    ],
)
def test_colour_transparent_or_many_channel_images_are_refused_in_one_line(tmp_path, name, arr, expect):
    path = tmp_path / name
    arr = arr.astype(np.uint8)
    if name.endswith(".png"):
        Image.fromarray(arr).save(path)
    elif name == "five.tif":
        tifffile.imwrite(path, arr, imagej=True, metadata={"axes": "ZCYX"})
    else:
        tifffile.imwrite(path, arr, photometric="rgb")
    with pytest.raises(DataError) as err:
        list(iter_slices(path)) if name == "five.tif" else read_stack(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and expect in msg and "shape" in msg and "\n" not in msg, msg


def test_unet_predict_refuses_a_colour_png_in_one_line(tmp_path, capsys):
    from unet.cli import main

    colour = np.zeros((64, 64, 3), np.uint8)
    colour[..., 1] = 200
    Image.fromarray(colour).save(tmp_path / "slice-rgb.png")
    with pytest.raises(SystemExit) as exc:  # checked before the model is loaded
        main(
            [
                "predict",
                str(tmp_path / "slice-rgb.png"),
                str(tmp_path / "out.tif"),
                "--models",
                str(tmp_path / "m.keras"),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1, err
    assert (
        f"{tmp_path / 'slice-rgb.png'}: RGB image of shape (64, 64, 3)" in err[0] and "colour channels differ" in err[0]
    )
    assert not (tmp_path / "out.tif").exists()
