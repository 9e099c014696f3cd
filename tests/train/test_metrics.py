"""PSNR, SSIM and BT.601 Y against scikit-image and hand-computed values."""

import math

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from support import DATA, PSNR_ATOL, SSIM_ATOL, SSIM_CLOSED_FORM_ATOL, needs_shared

from hirn.core.errors import InputError
from hirn.train.metrics import SSIM_C1, psnr, rgb_to_y, ssim

FRAME = DATA / "vid4" / "walk" / "GT" / "010.png"


def _skimage_ssim(a, b):
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255,
                                 channel_axis=2 if a.ndim == 3 else None)


@pytest.fixture(scope="module")
def pairs():
    """(ground truth, degraded) uint8 RGB pairs: random, and a real frame when present."""
    rng = np.random.default_rng(0)
    out = [(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8),
            rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))]
    if FRAME.exists():
        gt = cv2.cvtColor(cv2.imread(str(FRAME)), cv2.COLOR_BGR2RGB)[100:260, 200:400]
        blurred = cv2.GaussianBlur(gt, (5, 5), 1.2)
        noisy = np.clip(blurred.astype(int) + rng.integers(-6, 7, gt.shape), 0, 255)
        out.append((gt, noisy.astype(np.uint8)))
    return out


def test_psnr_matches_skimage_on_rgb_and_y(pairs):
    for gt, sr in pairs:
        assert math.isclose(psnr(gt, sr), peak_signal_noise_ratio(gt, sr, data_range=255),
                            abs_tol=PSNR_ATOL)
        y_gt, y_sr = rgb_to_y(gt), rgb_to_y(sr)
        assert math.isclose(psnr(y_gt, y_sr),
                            peak_signal_noise_ratio(y_gt, y_sr, data_range=255),
                            abs_tol=PSNR_ATOL)


def test_ssim_matches_skimage_on_rgb_and_y(pairs):
    for gt, sr in pairs:
        assert math.isclose(ssim(gt, sr), _skimage_ssim(gt, sr), abs_tol=SSIM_ATOL)
        y_gt, y_sr = rgb_to_y(gt), rgb_to_y(sr)
        assert math.isclose(ssim(y_gt, y_sr), _skimage_ssim(y_gt, y_sr), abs_tol=SSIM_ATOL)


@needs_shared(FRAME)
def test_real_frame_pair_is_in_the_expected_range(pairs):
    gt, sr = pairs[1]
    assert 25 < psnr(gt, sr) < 45 and 0.5 < ssim(gt, sr) < 1


def test_identical_images_give_inf_and_one():
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == 1.0
    assert ssim(rgb_to_y(img), rgb_to_y(img)) == 1.0


def test_hand_computed_psnr_and_ssim():
    a = np.full((20, 30), 100, np.uint8)
    b = np.full((20, 30), 110, np.uint8)
    # MSE = 100 -> PSNR = 10 log10(255^2 / 100).
    assert math.isclose(psnr(a, b), 10 * math.log10(255**2 / 100), abs_tol=PSNR_ATOL)
    assert math.isclose(psnr(a, b, peak=1.0), -20.0, abs_tol=PSNR_ATOL)
    # Flat images: no variance or covariance, only the luminance term remains.
    expected = (2 * 100 * 110 + SSIM_C1) / (100**2 + 110**2 + SSIM_C1)
    assert math.isclose(ssim(a, b), expected, abs_tol=SSIM_CLOSED_FORM_ATOL)
    # One pixel off by 255 in a 10x10 image: MSE = 255^2 / 100 -> 20 dB.
    c = np.zeros((10, 10, 3), np.uint8)
    d = c.copy()
    d[4, 4] = 255
    assert math.isclose(psnr(c, d), 20.0, abs_tol=PSNR_ATOL)


def test_rgb_to_y_bt601_values():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]],
                   np.uint8)
    np.testing.assert_allclose(rgb_to_y(rgb)[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553,
                                                  16 + 24.966], rtol=0, atol=1e-12)
    assert rgb_to_y(rgb).dtype == np.float64


def test_crop_border_scores_the_inside_only():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    b = a.copy()
    b[:4] = 255 - b[:4]  # differences only in the 4-pixel top border
    assert psnr(a, b) < 30 and psnr(a, b, crop_border=4) == math.inf
    assert ssim(a, b, crop_border=4) == 1.0
    assert math.isclose(ssim(a, b, crop_border=2), ssim(a[2:-2, 2:-2], b[2:-2, 2:-2]))


def test_size_limits_are_exact():
    """A border crop may leave 2 pixels per side; SSIM needs 11 (one full window)."""
    zeros, ones = np.zeros((10, 10), np.uint8), np.ones((10, 10), np.uint8)
    assert math.isclose(psnr(zeros, ones, crop_border=4), 10 * math.log10(255**2),
                        abs_tol=PSNR_ATOL)
    with pytest.raises(InputError, match="larger than 10 pixels per side"):
        ssim(zeros, ones)
    assert ssim(np.zeros((11, 11)), np.zeros((11, 11))) == 1.0
    with pytest.raises(InputError, match=r"images, got shape \[2, 2, 2, 2\]"):
        psnr(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))


@pytest.mark.parametrize("call, match", [
    (lambda: psnr(np.zeros((4, 4)), np.zeros((4, 5))), "differ in shape"),
    (lambda: ssim(np.zeros((8, 8)), np.zeros((8, 8))), "larger than 10"),
    (lambda: psnr(np.zeros((8, 8)), np.zeros((8, 8)), crop_border=4), "crop_border"),
    (lambda: rgb_to_y(np.zeros((4, 4))), r"\[H, W, 3\]"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(InputError, match=match):
        call()
