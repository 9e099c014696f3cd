"""PSNR and SSIM as the video-SR benchmarks compute them (BasicSR's formulas).

Inputs are images on the 0..255 scale (uint8, or float holding uint8 values
after the output was rounded), ``[H, W]`` or ``[H, W, C]``. Everything is
computed in float64.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from hirn.core.errors import InputError

# ITU-R BT.601 luma for RGB in [0, 1], giving Y in 16..235.
Y_WEIGHTS_RGB = np.array([65.481, 128.553, 24.966])
Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 Y of an RGB image: ``[H, W, 3]`` on 0..255 -> float64 ``[H, W]`` on 0..255.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B in [0, 1];
    not rounded (as BasicSR's ``to_y_channel``).
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"rgb_to_y takes an [H, W, 3] RGB image, got shape {list(img.shape)}")
    return img.astype(np.float64) / 255.0 @ Y_WEIGHTS_RGB + Y_OFFSET


def _pair(a: np.ndarray, b: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"images differ in shape: {list(a.shape)} vs {list(b.shape)}")
    if a.ndim not in (2, 3):
        raise InputError(f"expected [H, W] or [H, W, C] images, got shape {list(a.shape)}")
    if crop_border < 0 or 2 * crop_border >= min(a.shape[:2]):
        raise InputError(f"crop_border={crop_border} does not fit images of shape "
                         f"{list(a.shape)}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0, crop_border: int = 0) -> float:
    """PSNR in dB over all pixels and channels; ``inf`` for identical images."""
    a, b = _pair(a, b, crop_border)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two float64 ``[H, W]`` images over the valid window positions."""
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA)
    window = kernel @ kernel.T
    r = SSIM_WINDOW // 2
    valid = (slice(r, -r), slice(r, -r))

    def filt(x):
        return cv2.filter2D(x, -1, window)[valid]

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = (((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2))
                / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0) -> float:
    """SSIM (Gaussian 11x11 window, sigma 1.5), averaged over channels for ``[H, W, C]``.

    BasicSR's ``calculate_ssim``: the constants assume a 0..255 range and only
    window positions fully inside the image count (so H and W must exceed 10).
    """
    a, b = _pair(a, b, crop_border)
    if min(a.shape[:2]) <= 2 * (SSIM_WINDOW // 2):
        raise InputError(f"SSIM needs images larger than {SSIM_WINDOW - 1} pixels per side, "
                         f"got {list(a.shape)}")
    if a.ndim == 2:
        return _ssim_channel(a, b)
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))
