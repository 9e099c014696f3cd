"""Any LR size through a network that needs even sizes of at least 64: pad, run, crop.

Frames are padded at the bottom and right by reflection (``x[H-2], x[H-3], ...``), so the
content keeps its place and the x4 output is cropped back to ``[:4H, :4W]``. numpy's reflect
mode keeps reflecting back and forth when the pad is longer than the frame (a 7x9 input grows
to 64x64 that way); a side of one pixel is repeated.
"""

from __future__ import annotations

import numpy as np

from hirn.core.constants import MIN_SIZE, SCALE, SIZE_MULTIPLE


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the network runs at for an LR frame of ``height x width``."""
    if height < 1 or width < 1:
        raise ValueError(f"a frame needs at least one pixel, got {height}x{width}")

    def fit(n: int) -> int:
        return max(MIN_SIZE, -(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE)

    return fit(height), fit(width)


def pad_frames(frames: np.ndarray) -> np.ndarray:
    """Reflection-pad ``[T, C, H, W]`` frames to :func:`padded_size` (a view when no pad)."""
    height, width = frames.shape[-2:]
    target_h, target_w = padded_size(height, width)
    if (target_h, target_w) == (height, width):
        return frames
    pads = [(0, 0)] * (frames.ndim - 2) + [(0, target_h - height), (0, target_w - width)]
    return np.pad(frames, pads, mode="reflect")


def crop_output(hr: np.ndarray, height: int, width: int) -> np.ndarray:
    """The x4 output ``[T, C, 4H', 4W']`` of padded frames, cropped to the LR ``height x width``
    (``[T, C, 4 height, 4 width]``)."""
    return hr[..., : SCALE * height, : SCALE * width]


def to_uint8(hr: np.ndarray) -> np.ndarray:
    """Network output ``[T, 3, H, W]`` float (not clamped) -> ``[T, H, W, 3]`` uint8 RGB:
    clamped to [0, 1], scaled by 255 and rounded."""
    scaled = np.clip(hr, 0.0, 1.0) * 255.0
    return np.ascontiguousarray(np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1))


def to_uint16(hr: np.ndarray) -> np.ndarray:
    """Network output ``[T, 3, H, W]`` float (not clamped) -> ``[T, H, W, 3]`` uint16 RGB:
    clamped to [0, 1], scaled by 65535 and rounded (for outputs of more than 8 bits)."""
    scaled = np.clip(hr, 0.0, 1.0) * 65535.0
    return np.ascontiguousarray(np.rint(scaled).astype(np.uint16).transpose(0, 2, 3, 1))


def to_samples(hr: np.ndarray, dtype) -> np.ndarray:
    """Network output as ``[T, H, W, 3]`` RGB of ``dtype`` (np.uint8 or np.uint16)."""
    return to_uint16(hr) if dtype == np.uint16 else to_uint8(hr)


def to_float(images: np.ndarray) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 or uint16 RGB -> ``[T, 3, H, W]`` float32 in [0, 1] (the
    network input)."""
    peak = 65535.0 if images.dtype == np.uint16 else 255.0
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / peak
