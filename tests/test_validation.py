import numpy as np
import pytest
import tifffile

from unet.config import ValidateConfig
from unet.validation import ValidationFailed, slice_stats, validate


def test_real_data_passes(isbi):
    images = tifffile.imread(isbi / "train-volume.tif")
    labels = tifffile.imread(isbi / "train-labels.tif")
    report = validate(slice_stats(images, labels), ValidateConfig(), len(images))
    assert report["success"] and report["slices"] == 30
    assert all(r["success"] for r in report["results"]) and len(report["results"]) >= 9
    fg = [row["foreground"] for row in report["stats"]]
    assert abs(np.mean(fg) - 0.780369) < 1e-5  # the fraction of 255 given in the data's README


def test_failures_name_the_slices(isbi):
    images = tifffile.imread(isbi / "train-volume.tif")[:8].copy()
    labels = tifffile.imread(isbi / "train-labels.tif")[:8].copy()
    images[5] = 7  # blank slice
    labels[3, :4, :4] = 128  # third label value
    labels[6] = 255  # no membrane at all: foreground fraction 1.0
    with pytest.raises(ValidationFailed) as err:
        validate(slice_stats(images, labels[:7]), ValidateConfig(), len(images))
    failed = {
        r["expectation"] + ":" + str(r["kwargs"].get("column")): r["failing_slices"]
        for r in err.value.report["results"]
        if not r["success"]
    }
    assert failed["expect_column_values_to_be_between:std"] == [5]
    assert failed["expect_column_values_to_be_in_set:label_values"] == [3, 6]
    assert failed["expect_column_values_to_be_between:foreground"] == [6]
    assert failed["expect_column_values_to_not_be_null:label_height"] == [7]  # 8 images, 7 labels
    assert "slices [5]" in str(err.value)
