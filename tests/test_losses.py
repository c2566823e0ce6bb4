import numpy as np
import pytest
from keras import ops

from unet.losses import SegmentationLoss, border_weights, soft_dice
from unet.metrics import soft_dice as host_soft_dice

pytestmark = pytest.mark.core


def test_soft_dice_perfect_and_matches_host_metric():
    rng = np.random.default_rng(0)
    labels = (rng.random((2, 16, 16)) > 0.5).astype(np.float32)
    perfect = np.stack([-20 * (labels - 0.5), 20 * (labels - 0.5)], -1)
    np.testing.assert_allclose(ops.convert_to_numpy(soft_dice(perfect, labels)), 1.0, atol=1e-6)
    logits = rng.normal(size=(2, 16, 16, 2)).astype(np.float32)
    p1 = 1 / (1 + np.exp(logits[..., 0] - logits[..., 1]))
    dev = ops.convert_to_numpy(soft_dice(logits, labels))
    for i in range(2):
        assert abs(dev[i] - host_soft_dice(p1[i], labels[i])) < 1e-5


def test_loss_weights_and_dice_term():
    rng = np.random.default_rng(1)
    labels = (rng.random((2, 8, 8)) > 0.5).astype(np.float32)
    logits = rng.normal(size=(2, 8, 8, 2)).astype(np.float32)
    ones = np.stack([labels, np.ones_like(labels)], -1)
    twos = np.stack([labels, 2 * np.ones_like(labels)], -1)
    ce_only = SegmentationLoss(dice_weight=0.0)
    a = float(ops.convert_to_numpy(ce_only(ones, logits)))
    b = float(ops.convert_to_numpy(ce_only(twos, logits)))
    assert abs(b - 2 * a) < 1e-5
    with_dice = float(ops.convert_to_numpy(SegmentationLoss(dice_weight=1.0)(ones, logits)))
    dice = ops.convert_to_numpy(soft_dice(logits, labels)).mean()
    assert abs(with_dice - a - (1 - dice)) < 1e-5


def test_border_weight_map_peaks_between_close_cells():
    lab = np.zeros((40, 60), np.uint8)
    lab[5:35, 5:28] = 1  # two cells 2 px apart
    lab[5:35, 30:55] = 1
    w = border_weights(lab, w0=10.0, sigma=5.0)
    gap, far = w[20, 28], w[0, 0]
    assert gap > 8 and gap > far + 5  # w0 * exp(-(1 + 1)^2 / 50) ~ 9.2 on top of the class weight
    assert np.allclose(w[lab == 1], w[10, 10])  # interior: the class weight alone
