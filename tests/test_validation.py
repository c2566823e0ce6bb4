import argparse
import dataclasses

import numpy as np
import pytest
import tifffile

from unet import config
from unet.config import ValidateConfig
from unet.stages import validate as stage
from unet.validation import ValidationFailed, slice_stats, spans, validate

from .conftest import project_params


def isbi_ranges() -> ValidateConfig:
    """The committed params.yaml's validate section: ISBI 2012's stricter ranges."""
    return config.loads(project_params()).validate


def sparse_uint16(n: int = 8, h: int = 200, w: int = 260, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 12-bit-in-uint16 stack with labels 0/1, about 10% foreground, and one slice with no foreground."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), (0, 6, 6))
    labels = (smooth > np.quantile(smooth, 0.9)).astype(np.uint8)
    labels[2] = 0  # a slice without any object: common in sparse data
    images = (1000 + 2000 * (smooth - smooth.min()) / np.ptp(smooth) + rng.normal(0, 40, smooth.shape)).astype(
        np.uint16
    )
    return images, labels


def _failed(err: pytest.ExceptionInfo) -> dict[str, list[int]]:
    return {
        r["expectation"] + ":" + str(r["kwargs"].get("column")): r["failing_slices"]
        for r in err.value.report["results"]
        if not r["success"]
    }


def test_real_data_passes_isbi_ranges_and_the_generic_defaults(isbi):
    images = tifffile.imread(isbi / "train-volume.tif")
    labels = tifffile.imread(isbi / "train-labels.tif")
    stats = slice_stats(images, labels)
    for cfg in (isbi_ranges(), ValidateConfig()):
        report = validate(stats, cfg, len(images))
        assert report["success"] and report["slices"] == 30
        assert all(r["success"] for r in report["results"]) and len(report["results"]) >= 9
    fg = [row["foreground"] for row in report["stats"]]
    assert abs(np.mean(fg) - 0.780369) < 1e-5  # the fraction of 255 given in the data's README
    assert isbi_ranges() == ValidateConfig(min_foreground=0.3, max_foreground=0.95, min_relative_std=0.05)


def test_failures_name_the_slices(isbi):
    images = tifffile.imread(isbi / "train-volume.tif")[:8].copy()
    labels = tifffile.imread(isbi / "train-labels.tif")[:8].copy()
    images[5] = 7  # blank slice
    labels[3, :4, :4] = 128  # third label value
    labels[6] = 255  # no membrane at all: foreground fraction 1.0
    with pytest.raises(ValidationFailed) as err:
        validate(slice_stats(images, labels[:7]), isbi_ranges(), len(images))
    failed = _failed(err)
    assert failed["expect_column_values_to_be_between:relative_std"] == [5]
    assert failed["expect_column_values_to_be_in_set:label_values"] == [3]
    assert failed["expect_column_values_to_be_between:foreground"] == [6]
    assert failed["expect_column_values_to_not_be_null:label_height"] == [7]  # 8 images, 7 labels
    assert "\n" not in str(err.value) and "relative_std {'min_value': 0.05} failed at slices 5;" in str(err.value)


def test_generic_defaults_accept_sparse_uint16_and_float_stacks_that_isbi_ranges_reject():
    images, labels = sparse_uint16()
    fg = slice_stats(images, labels)["foreground"]
    assert 0.05 < fg.mean() < 0.15 and fg[2] == 0
    for stack in (images, images.astype(np.float32) / 65535, (images - 1000.0) / 2000):  # float in [0, 1]
        assert validate(slice_stats(stack, labels), ValidateConfig(), len(stack))["success"]
    with pytest.raises(ValidationFailed) as err:
        validate(slice_stats(images, labels), isbi_ranges(), len(images))
    assert _failed(err) == {"expect_column_values_to_be_between:foreground": list(range(8))}
    assert str(err.value).endswith("failed at slices 0-7")


@pytest.mark.parametrize("scale", [1.0, 1 / 4095])
def test_blank_slices_are_caught_whatever_the_grey_scale(scale):
    images, labels = sparse_uint16()
    stack = images.astype(np.float64) * scale
    stack[4] = stack[4].mean() + np.random.default_rng(1).normal(0, 1e-3 * np.ptp(stack), stack[4].shape)
    with pytest.raises(ValidationFailed) as err:
        validate(slice_stats(stack, labels), ValidateConfig(), len(stack))
    assert _failed(err) == {"expect_column_values_to_be_between:relative_std": [4]}


def test_failing_slices_are_listed_compactly():
    assert spans([7, 0, 1, 2, 3, 9, 10]) == "0-3, 7, 9-10"
    assert spans(list(range(0, 100, 2)), most=3) == "0, 2, 4, ... (50 slices in all)"


def test_bounds_are_checked_at_load():
    with pytest.raises(ValueError, match=r"validate.min_foreground: invalid value \(0.5, 0.2\)"):
        ValidateConfig(min_foreground=0.5, max_foreground=0.2)
    assert dataclasses.replace(ValidateConfig(), min_foreground=0.2).max_foreground == 1.0


def test_validate_stage_fails_in_one_line_naming_the_slices_with_no_output(tmp_path):
    images, labels = sparse_uint16(n=6, h=40, w=52)
    images[4] = 1234  # blank
    cfg = config.Config()  # the generic defaults: images.tif, labels.tif
    tifffile.imwrite(tmp_path / cfg.download.images[0], images)
    tifffile.imwrite(tmp_path / cfg.download.labels, labels)
    report, summary = tmp_path / "report.json", tmp_path / "summary.md"
    args = argparse.Namespace(raw=str(tmp_path), report=str(report), summary=str(summary))
    with pytest.raises(ValidationFailed) as err:
        stage.main(args, cfg)
    assert str(err.value) == (
        f"{tmp_path / 'labels.tif'}: validation of 6 slices failed: "
        "expect_column_values_to_be_between on relative_std {'min_value': 0.01} failed at slices 4"
    )
    assert not report.exists() and not summary.exists()


def test_the_validate_stage_says_one_line_on_good_data(isbi, tmp_path):
    """Great Expectations logs ~200 'Skipping registering function' lines on import: none reach the user."""
    import subprocess
    import sys

    from .conftest import ROOT, project_params

    (tmp_path / "params.yaml").write_text(project_params())
    cmd = [sys.executable, "-m", "unet.stages.validate", "--raw", str(isbi)]
    cmd += ["--report", str(tmp_path / "r.json"), "--summary", str(tmp_path / "s.md")]
    r = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("validate: 30 slices, ") and "expectations passed" in lines[0], lines
