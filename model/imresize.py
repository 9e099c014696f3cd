"""MATLAB-compatible bicubic ``imresize`` (antialiased when downscaling).

Reproduces MATLAB's ``imresize(I, scale)`` (default ``'bicubic'``,
``'Antialiasing', true``) bit-exactly on uint8 images, which the video-SR
benchmarks use to make their LR frames: cubic kernel with a = -0.5, kernel
stretched by 1/scale when downscaling, symmetric (mirror) borders, the height
pass before the width pass, float64 throughout and one rounding half away from
zero at the end. Rounding half to even, float32 or rounding between the two
passes each change some pixels.
"""

from __future__ import annotations

import math

import numpy as np

from hirn.core.errors import InputError

KERNEL_WIDTH = 4.0  # support of the cubic kernel, in input pixels at scale 1


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel; a = -0.5 is MATLAB's ``cubic``, -0.75 PyTorch's and
    OpenCV's bicubic. (With a = -0.5 every coefficient is exact, so MATLAB's values stay
    bit for bit.)"""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (((a + 2) * ax3 - (a + 3) * ax2 + 1) * (ax <= 1)
            + (a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax <= 2)))


def contributions(in_length: int, out_length: int, scale: float,
                  antialiasing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB's ``contributions``: per output pixel, its input indices and weights.

    Returns:
        ``(weights, indices)``, both ``[out_length, P]``; indices are 0-based
        and already mirrored into ``[0, in_length)``; each row of weights sums to 1.
    """
    kernel_width = KERNEL_WIDTH
    if scale < 1 and antialiasing:
        def h(x):
            return scale * cubic(scale * x)
        kernel_width /= scale
    else:
        h = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]  # 1-based, as in MATLAB
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    ind = left + np.arange(taps)[None, :]
    weights = h(u - ind)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric borders: 1..n, n..1, repeated.
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    ind = mirror[np.mod(ind.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)  # drop all-zero tap columns, as MATLAB does
    return weights[:, keep], ind[:, keep]


def _resize_axis(x: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    """Resize float64 ``x`` along ``axis`` (0 = height, 1 = width)."""
    weights, ind = contributions(x.shape[axis], out_length, scale)
    x = np.moveaxis(x, axis, 0)
    # Accumulate tap by tap, in MATLAB's order: the float64 sums then round as
    # MATLAB's do, even for values that land next to a .5 rounding boundary.
    extra = (1,) * (x.ndim - 1)
    out = np.zeros((out_length,) + x.shape[1:], dtype=np.float64)
    for p in range(weights.shape[1]):
        out += weights[:, p].reshape((-1,) + extra) * x[ind[:, p]]
    return np.moveaxis(out, 0, axis)


def output_size(in_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size for a scale factor: ``ceil(scale * size)`` per axis."""
    return math.ceil(scale * in_size[0]), math.ceil(scale * in_size[1])


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize like MATLAB's ``imresize(image, scale)`` (bicubic, antialiased).

    Args:
        image: ``[H, W]`` or ``[H, W, C]``; uint8 (0..255) or float (any range).
        scale: resize factor, e.g. ``0.25`` or ``4``; output is
            ``ceil(scale * H) x ceil(scale * W)``.

    Returns:
        uint8 (rounded half away from zero, clipped to 0..255) for uint8 input,
        float64 without rounding for float input.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise InputError(f"imresize takes an [H, W] or [H, W, C] image, got shape "
                         f"{list(image.shape)}")
    if not (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"imresize takes uint8 or float images, got dtype {image.dtype}")
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(f"scale must be a positive number, got {scale}")
    if min(image.shape[:2]) < 1:
        raise InputError(f"cannot resize an empty image of shape {list(image.shape)}")
    out_h, out_w = output_size(image.shape[:2], scale)
    out = image.astype(np.float64)
    # One scale for both axes: MATLAB then resizes the height first.
    out = _resize_axis(out, 0, out_h, scale)
    out = _resize_axis(out, 1, out_w, scale)
    if image.dtype == np.uint8:
        # Half away from zero: values below 0 are clipped to 0 anyway.
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out
