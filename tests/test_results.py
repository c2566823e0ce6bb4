"""The evaluate stage's results as DVC shows them: metric files of one shape, overlays that fit a screen,
training curves of every fold in one table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unet.evaluation import FALSE_NEGATIVE, FALSE_POSITIVE, overlay, training_curves
from unet.metrics import METRICS
from unet.results import read_metrics, report, write_metrics


def per_fold(k: int) -> dict[int, dict]:
    rng = np.random.default_rng(0)
    return {
        i: {"slices": [i, i + k], "vrand_threshold": 0.5, "dice": 0.9, **{m: float(rng.random()) for m in METRICS}}
        for i in range(k)
    }


def test_metric_files_are_rows_of_one_table(tmp_path):
    folds = per_fold(3)
    write_metrics(tmp_path / "metrics", folds)
    files = sorted(p.name for p in (tmp_path / "metrics").iterdir())
    assert files == ["fold0.json", "fold1.json", "fold2.json", "mean.json", "std.json"]
    rows = {p: json.loads((tmp_path / "metrics" / p).read_text()) for p in files}
    assert all(list(r) == list(METRICS) for r in rows.values())  # same keys: no thresholds, slices, fold index
    assert rows["mean.json"]["vrand"] == pytest.approx(np.mean([f["vrand"] for f in folds.values()]))
    assert rows["std.json"]["vrand"] == pytest.approx(np.std([f["vrand"] for f in folds.values()], ddof=1))
    assert read_metrics(tmp_path / "metrics") == {k: {m: f[m] for m in METRICS} for k, f in folds.items()}
    rep = report(folds, 0.5)
    assert rep["folds"]["fold1"] == {"slices": [1, 4], "vrand_threshold": 0.5, "dice": 0.9}
    with pytest.raises(ValueError, match="no fold metrics"):
        read_metrics(tmp_path)


@pytest.mark.parametrize("side", [512, 2048])
def test_overlay_fits_a_screen_and_shows_its_legend(side):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (side, side), np.uint8)
    labels = (rng.random((side, side)) > 0.5).astype(np.uint8)
    prob = rng.random((side, side)).astype(np.float32)
    rgb = overlay(image, labels, prob, 0.5, "cell interior")
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3 and rgb.shape[1] <= 1024
    assert rgb.shape[0] > rgb.shape[1]  # 2 x 2 panels with their titles, and the legend below
    legend = rgb[-36:]  # the two colour keys
    for colour in (FALSE_POSITIVE, FALSE_NEGATIVE):
        assert (legend == colour).all(-1).sum() >= 100, colour


def test_training_curves_gather_every_fold(tmp_path):
    for k in (0, 1):
        d = tmp_path / f"fold{k}" / "plots" / "metrics"
        d.mkdir(parents=True)
        for name in ("loss", "soft_dice", "img_per_s"):
            (d / f"{name}.tsv").write_text(f"step\t{name}\n10\t{k + 0.5}\n20\t{k + 0.25}\n")
    rows = training_curves({k: tmp_path / f"fold{k}" for k in (0, 1)})
    assert rows[0] == {"fold": 0, "step": 10, "loss": 0.5, "soft_dice": 0.5}
    assert [(r["fold"], r["step"]) for r in rows] == [(0, 10), (0, 20), (1, 10), (1, 20)]
    assert all("img_per_s" not in r for r in rows)  # throughput is not a training curve
