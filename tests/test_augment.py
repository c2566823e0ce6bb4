import numpy as np
import pytest
from keras import ops

from unet.augment import _reflect, augment, draw_params
from unet.config import AugmentConfig

from .conftest import synthetic

pytestmark = pytest.mark.core


def _run(images, labels, cfg, seed, tile=92, out=52, photometric=False):
    p = draw_params(np.random.default_rng(seed), len(images), cfg, images.shape[1:], tile, out)
    if not photometric:
        p["brightness"][:] = 0
        p["contrast"][:] = 0
    batch = {"image": images, "label": labels, **p}
    return [
        ops.convert_to_numpy(t) for t in augment({k: ops.convert_to_tensor(v) for k, v in batch.items()}, tile, out)
    ]


@pytest.mark.parametrize("sigma", [0.0, 10.0])
def test_label_stays_aligned_with_image(sigma):
    """label = threshold(image) must survive the joint geometric augmentation."""
    images, _ = synthetic(6, 64, noise=0.0)  # smooth: neighbouring pixels differ by a few grey levels
    labels = (images > 127).astype(np.uint8)
    img, lab, w = _run(images, labels, AugmentConfig(elastic_sigma=sigma), seed=3)
    centre = img[:, 20:72, 20:72, 0]  # the 52 px output tile inside the 92 px input tile
    assert img.shape == (6, 92, 92, 1) and lab.shape == w.shape == (6, 52, 52)
    # bilinear sampling between pixels moves values by less than one pixel step (<= 22 grey levels here)
    sure = np.abs(centre - 127.5 / 255) > 24 / 255
    assert sure.mean() > 0.4
    assert ((centre > 127.5 / 255) == lab)[sure].all()
    if sigma == 0:  # integer coordinates: the image is sampled exactly
        assert ((centre > 127.5 / 255) == lab).all()
    assert (w == 1).all()


def test_transforms_are_exercised_and_deterministic():
    images, labels = synthetic(8, 64)
    a = _run(images, labels // 255, AugmentConfig(), seed=5, photometric=True)
    b = _run(images, labels // 255, AugmentConfig(), seed=5, photometric=True)
    c = _run(images, labels // 255, AugmentConfig(), seed=6, photometric=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert a[0].min() >= 0.0 and a[0].max() <= 1.0


def test_pure_crop_matches_numpy_reflect_padding():
    """Without flips or elastic warps, a tile is exactly a crop of the mirror-padded slice."""
    images, labels = synthetic(2, 40)
    cfg = AugmentConfig(flip_rotate=False, elastic_sigma=0.0)
    p = draw_params(np.random.default_rng(0), 2, cfg, (40, 40), 92, 52)
    img, lab, _ = _run(images, labels // 255, cfg, seed=0)
    margin = 20
    padded = np.pad(images, ((0, 0), (margin + 60, margin + 60), (margin + 60, margin + 60)), mode="reflect")
    for i in range(2):
        y0, x0 = (p["center"][i] - 45.5).astype(int) + 60 + margin
        np.testing.assert_allclose(img[i, ..., 0], padded[i, y0 : y0 + 92, x0 : x0 + 92] / 255.0, atol=1e-6)
        lab_padded = np.pad(labels[i] // 255, margin + 60, mode="reflect")
        np.testing.assert_array_equal(
            lab[i], lab_padded[y0 + margin : y0 + margin + 52, x0 + margin : x0 + margin + 52]
        )


def test_reflect_matches_numpy():
    c = np.arange(-30, 60, dtype=np.float32)
    ref = np.pad(np.arange(10), 60, mode="reflect")[60 - 30 : 60 + 60]
    np.testing.assert_array_equal(ops.convert_to_numpy(_reflect(ops.convert_to_tensor(c), 10)), ref)
