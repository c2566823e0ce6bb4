"""Metrics against an independent port of the ISBI 2012 challenge's Fiji code (``tests/isbi_reference.py``,
written from the Java without reading ``unet/metrics.py``), on real ISBI label slices and by hand."""

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from unet.metrics import THRESHOLDS, challenge_scores, fixed_scores, overlap, soft_dice, stack_metrics

from . import isbi_reference as ref


@pytest.fixture(scope="module")
def labels(isbi):
    """Three real label slices, cropped to 192x192 to keep the pure-Python oracle quick."""
    lab = tifffile.imread(isbi / "train-labels.tif")[[0, 11, 23], 100:292, 150:342]
    return (lab > 0).astype(np.uint8)


def degrade(kind: str, lab: np.ndarray, seed: int = 0) -> np.ndarray:
    """Realistic imperfect interior-probability maps of the true labels."""
    rng = np.random.default_rng(seed)
    f = lab.astype(np.float64)
    if kind == "blur_noise":
        p = ndimage.gaussian_filter(f, (0, 2, 2)) + rng.normal(0, 0.15, f.shape)
    elif kind == "thick":  # membranes 2 px thicker on each side, soft edges
        p = ndimage.gaussian_filter(ndimage.binary_erosion(lab, iterations=2, axes=(1, 2)).astype(float), (0, 1, 1))
    elif kind == "gaps":  # holes in the membrane merge neighbouring cells
        holes = ndimage.binary_dilation(rng.random(f.shape) < 0.002, iterations=3, axes=(1, 2))
        p = np.where(holes, 0.9, ndimage.gaussian_filter(f, (0, 1, 1)))
    elif kind == "blobs":  # spurious membrane blobs inside cells split them
        blobs = ndimage.binary_dilation(rng.random(f.shape) < 0.001, iterations=4, axes=(1, 2))
        p = np.where(blobs, 0.05, f * 0.8 + 0.1)
    else:
        raise ValueError(kind)
    return np.clip(p, 0, 1).astype(np.float32)


def test_thresholds_are_the_java_loop():
    assert tuple(ref.java_thresholds()) == THRESHOLDS
    assert len(THRESHOLDS) == 11 and THRESHOLDS[-1] == 0.9999999999999999


def test_perfect_prediction_scores_one(labels):
    ours = challenge_scores(labels.astype(np.float32), labels)
    assert ours["vrand"] == pytest.approx(1.0) and ours["vinfo"] == pytest.approx(1.0)
    assert ours["pixel_error"] == 0.0


def test_two_cells_without_their_membrane_score_two_thirds():
    """The border-to-border membrane case by hand: the challenge gives 0.667, a thinned ground truth 1.0."""
    gt = np.ones((1, 21, 21), np.uint8)
    gt[0, :, 10] = 0  # two cells of 210 px, split from the top border to the bottom
    ours = challenge_scores(np.ones(gt.shape, np.float32), gt)
    # N^2 pair counts: 2 * 210^2 true same-cell pairs, all 420^2 proposed as one: F = 2 TP / (true + proposed)
    assert ours["vrand"] == pytest.approx(2 * (2 * 210**2) / (2 * 210**2 + 420**2), abs=1e-12)  # 0.6667
    assert ours["vrand"] == pytest.approx(ref.challenge_scores(gt, np.ones(gt.shape))["vrand"], abs=1e-12)
    assert ours["vinfo"] == 0.0  # one proposed segment carries no information


@pytest.mark.parametrize("kind", ["blur_noise", "thick", "gaps", "blobs"])
def test_challenge_scores_match_the_reference_port(labels, kind):
    prob = degrade(kind, labels)
    ours, theirs = challenge_scores(prob, labels), ref.challenge_scores(labels, prob)
    # the pixel error shares no watershed: identical up to rounding
    assert ours["pixel_error"] == pytest.approx(theirs["pixel_error"], abs=1e-12)
    assert ours["pixel_error_threshold"] == round(theirs["pixel_threshold"], 1)
    # scikit-image's watershed breaks ties between equal fronts differently from the Fiji plugin's flooding,
    # which moves a dam line by one pixel on even-width membranes: measured <= 9e-4, bounded at 2e-3
    assert ours["vrand"] == pytest.approx(theirs["vrand"], abs=2e-3)
    assert ours["vinfo"] == pytest.approx(theirs["vinfo"], abs=2e-3)
    assert 0.3 < ours["vrand"] < 1.0


def test_identical_where_the_thinning_cannot_differ(labels):
    """Binary proposals with 1-px membranes need no flooding choice: the port and ours agree to 1e-9."""
    from skimage.segmentation import watershed

    skeleton = labels.copy()
    for i in range(len(skeleton)):  # cells grown until they touch: 1-px dams, no even-width membrane left
        seeds = ndimage.label(labels[i], structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])[0]
        skeleton[i] = watershed(np.zeros_like(seeds), seeds, connectivity=1, watershed_line=True) > 0
    prob = skeleton.astype(np.float32)
    ours, theirs = challenge_scores(prob, labels), ref.challenge_scores(labels, prob)
    assert ours["vrand"] == pytest.approx(theirs["vrand"], abs=1e-9)
    assert ours["vinfo"] == pytest.approx(theirs["vinfo"], abs=1e-9)


def test_one_threshold_for_the_stack_not_an_oracle_per_slice(labels):
    """The stack's V_rand is the mean over slices at the one threshold it reports."""
    prob = degrade("blur_noise", labels, seed=3)
    stack = challenge_scores(prob, labels)
    fixed = fixed_scores(prob, labels, stack["vrand_threshold"] + 1e-9)  # the Java's accumulated threshold
    assert fixed["vrand_fixed"] == pytest.approx(stack["vrand"], abs=1e-12)
    others = [fixed_scores(prob, labels, t)["vrand_fixed"] for t in (0.3, 0.5, 0.7)]
    assert stack["vrand"] >= max(others) - 1e-12


def test_degenerate_slices_score_as_the_java_does():
    """No ground-truth interior: NaN (never chosen); one cell predicted as one segment: V_info 0."""
    one_cell = np.ones((1, 12, 12), np.uint8)
    ours, theirs = challenge_scores(one_cell.astype(np.float32), one_cell), ref.challenge_scores(one_cell, one_cell)
    assert (ours["vrand"], ours["vinfo"]) == pytest.approx((theirs["vrand"], theirs["vinfo"]))
    assert ours["vinfo"] == 0.0
    empty = np.zeros((1, 12, 12), np.uint8)
    ours, theirs = challenge_scores(np.full(empty.shape, 0.5, np.float32), empty), ref.challenge_scores(empty, empty)
    assert (ours["vrand"], ours["vinfo"]) == (0.0, 0.0) == (theirs["vrand"], theirs["vinfo"])


def test_stack_metrics_names_and_ranges(labels):
    fold, rows = stack_metrics(degrade("gaps", labels), labels, 0.5)
    assert {"vrand", "vinfo", "pixel_error", "vrand_fixed", "vinfo_fixed", "mismatch", "soft_dice"} <= set(fold)
    assert fold["vrand_threshold"] in [round(t, 1) for t in THRESHOLDS]
    assert len(rows) == 3 and all(0 <= r["mismatch"] <= 1 for r in rows)


def test_overlap_and_soft_dice_by_hand():
    lab = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 1]])
    o = overlap(pred, lab)
    assert o == {"dice": 0.5, "iou": 1 / 3, "dice_membrane": 0.5, "mismatch": 0.5}
    prob = np.array([[1.0, 0.5, 0.0, 0.0]])
    # class 1: 2 * 1.5 / (1.25 + 2); class 0 (p = 0, .5, 1, 1): 2 * 2 / (2.25 + 2)
    expect = 0.5 * ((3 + 1e-6) / (3.25 + 1e-6) + (4 + 1e-6) / (4.25 + 1e-6))
    assert soft_dice(prob, lab) == pytest.approx(expect)
