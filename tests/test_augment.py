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


def test_uint8_slices_give_the_same_tiles_as_scaled_float():
    """uint8 pixels are now scaled after the gather; whole slices once were, before it: the same bits either way."""
    images, labels = synthetic(4, 48)
    a = _run(images, labels // 255, AugmentConfig(), seed=2, photometric=True)
    scaled = ops.convert_to_numpy(ops.cast(ops.convert_to_tensor(images), "float32") / 255.0)  # as the backend did
    b = _run(scaled, labels // 255, AugmentConfig(), seed=2, photometric=True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert 0.1 < a[0].mean() < 0.9 and 0.1 < a[1].mean() < 0.9  # real content, not an empty tile


def test_pure_crop_matches_numpy_symmetric_padding():
    """Without flips or elastic warps, a tile is exactly a crop of the mirror-padded slice."""
    images, labels = synthetic(4, 40)
    cfg = AugmentConfig(flip_rotate=False, elastic_sigma=0.0)
    p = draw_params(np.random.default_rng(0), 4, cfg, (40, 40), 92, 52)
    img, lab, _ = _run(images, labels // 255, cfg, seed=0)
    pad = 200  # the label tile may start anywhere in [0, 80): the input tile reaches 152 px past the slice
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    for i in range(4):
        y0, x0 = (p["center"][i] - 45.5).astype(int) + pad
        np.testing.assert_allclose(img[i, ..., 0], padded[i, y0 : y0 + 92, x0 : x0 + 92] / 255.0, atol=1e-6)
        lab_padded = np.pad(labels[i] // 255, pad, mode="symmetric")
        np.testing.assert_array_equal(lab[i], lab_padded[y0 + 20 : y0 + 20 + 52, x0 + 20 : x0 + 20 + 52])


def test_every_pixel_is_equally_likely_in_a_label_tile():
    """Coverage histogram of label-tile pixels over slice rows: flat, border rows included."""
    from unet.augment import sample_coords

    s, tile, out, n = 64, 92, 52, 4000
    cfg = AugmentConfig(flip_rotate=True, elastic_sigma=0.0)
    p = draw_params(np.random.default_rng(0), n, cfg, (s, s), tile, out)
    y, x = (ops.convert_to_numpy(c) for c in sample_coords(p, tile, (s, s)))
    m = (tile - out) // 2
    rows = np.round(y[:, m : m + out, m : m + out]).astype(int).ravel()
    cols = np.round(x[:, m : m + out, m : m + out]).astype(int).ravel()
    for hist in (np.bincount(rows, minlength=s), np.bincount(cols, minlength=s)):
        expected = n * out * out / s  # every row (column) equally often
        assert np.abs(hist / expected - 1).max() < 0.08, hist / expected
    # exactly flat over one full period of tile positions (no sampling noise): every corner 0..2s-1
    tops = np.arange(2 * s, dtype=np.float32)
    exact = {
        "center": np.stack([tops, np.zeros_like(tops)], -1) - m + (tile - 1) / 2,
        "dihedral": np.zeros(2 * s, np.int32),
        "grid": np.zeros((2 * s, 3, 3, 2), np.float32),
    }
    y, _ = (ops.convert_to_numpy(c) for c in sample_coords(exact, tile, (s, s)))
    hist = np.bincount(np.round(y[:, m : m + out, m : m + out]).astype(int).ravel(), minlength=s)
    assert (hist == hist[0]).all(), hist


def test_reflect_matches_numpy():
    c = np.arange(-30, 60, dtype=np.float32)
    ref = np.pad(np.arange(10), 60, mode="symmetric")[60 - 30 : 60 + 60]
    np.testing.assert_array_equal(ops.convert_to_numpy(_reflect(ops.convert_to_tensor(c), 10)), ref)
