import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

from unet.metrics import cells, overlap, rand_info, slice_metrics, soft_dice


@pytest.fixture(scope="module")
def real(isbi):
    lab = (tifffile.imread(isbi / "train-labels.tif")[:2] > 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    prob = np.clip(ndimage.gaussian_filter(lab[0].astype(float), 2) + rng.normal(0, 0.2, lab[0].shape), 0, 1)
    return lab, prob


def test_vrand_matches_scikit_image(real):
    lab, prob = real
    gt = cells(lab[0].astype(bool))
    for seg in (cells(prob > 0.5), cells(lab[1].astype(bool)), cells(prob > 0.8)):
        v_rand, v_info = rand_info(seg, gt)
        error, _, _ = adapted_rand_error(gt, seg, ignore_labels=(0,))
        # scikit-image subtracts n from each sum of squares (pairs without self-pairs): ~1e-4 apart here
        assert abs(v_rand - (1 - error)) < 1e-3
        mask = gt != 0
        # scikit-image's variation of information H(S|T) + H(T|S), in bits: I(S;T) = (H(S) + H(T) - VI) / 2
        vi = float(np.sum(variation_of_information(gt[mask], seg[mask]))) * np.log(2)
        hs, ht = _entropy(seg[mask]), _entropy(gt[mask])
        assert abs(v_info - (hs + ht - vi) / (hs + ht)) < 1e-9


def _entropy(x):
    _, c = np.unique(x, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def test_perfect_prediction_scores_one(real):
    lab, _ = real
    m = slice_metrics(lab[0].astype(float), lab[0])
    for k in ("soft_dice", "dice", "iou", "dice_membrane", "vrand", "vinfo"):
        assert m[k] == pytest.approx(1.0), k
    assert m["pixel_error"] == 0.0


def test_noisy_prediction_scores_lower_and_best_threshold_is_reported(real):
    lab, prob = real
    m = slice_metrics(prob, lab[0])
    assert 0.5 < m["vrand"] < 1 and 0.5 < m["vinfo"] < 1 and 0 < m["pixel_error"] < 0.2
    assert m["vrand_threshold"] in [round(0.1 * i, 1) for i in range(11)]
    assert m["vrand"] >= rand_info(cells(prob > 0.5), cells(lab[0].astype(bool)))[0]


def test_overlap_and_soft_dice_by_hand():
    lab = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 1]])
    o = overlap(pred, lab)
    assert o == {"dice": 0.5, "iou": 1 / 3, "dice_membrane": 0.5, "pixel_error": 0.5}
    prob = np.array([[1.0, 0.5, 0.0, 0.0]])
    # class 1: 2 * 1.5 / (1.25 + 2); class 0 (p = 0, .5, 1, 1): 2 * 2 / (2.25 + 2)
    expect = 0.5 * ((3 + 1e-6) / (3.25 + 1e-6) + (4 + 1e-6) / (4.25 + 1e-6))
    assert soft_dice(prob, lab) == pytest.approx(expect)
