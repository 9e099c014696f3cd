"""Any LR size: reflection padding to what the network takes, and the crop back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from support import PADDED_ALIGNED_MIN_PSNR_DB, PADDED_CROP_MAX_LEVELS

from hirn.media.video import open_source, read_frames
from hirn.model.hirn import MIN_SIZE as MODEL_MIN_SIZE
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.padding import (
    MIN_SIZE,
    crop_output,
    pad_frames,
    padded_size,
    to_float,
    to_samples,
    to_uint8,
    to_uint16,
)
from hirn.runtime.pipeline import RunConfig, open_output, upscale
from hirn.train import load_model


def reflect_index(i: int, n: int) -> int:
    """Index of padded position ``i`` in a line of ``n`` samples, reflected back and forth
    (written out here, independently of numpy's pad)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    m = i % period
    return m if m < n else period - m


@pytest.mark.parametrize("size, expected", [((135, 240), (136, 240)), ((7, 9), (64, 64)),
                                            ((64, 64), (64, 64)), ((65, 1), (66, 64)),
                                            ((144, 176), (144, 176))])
def test_padded_size_is_even_and_at_least_the_minimum(size, expected):
    assert padded_size(*size) == expected
    assert MIN_SIZE == MODEL_MIN_SIZE


@pytest.mark.parametrize("height, width", [(135, 240), (7, 9), (9, 7), (1, 3), (64, 66)])
def test_padding_reflects_back_and_forth(height, width):
    rng = np.random.default_rng(1)
    frames = rng.random((2, 3, height, width), dtype=np.float32)
    padded = pad_frames(frames)
    target_h, target_w = padded_size(height, width)
    assert padded.shape == (2, 3, target_h, target_w)
    rows = [reflect_index(i, height) for i in range(target_h)]
    cols = [reflect_index(j, width) for j in range(target_w)]
    assert np.array_equal(padded, frames[:, :, rows][:, :, :, cols])


def test_crop_and_output_conversion():
    hr = np.zeros((1, 3, 4 * 136, 4 * 240), np.float32)
    assert crop_output(hr, 135, 240).shape == (1, 3, 540, 960)
    values = np.array([-0.2, 0.0, 100.4 / 255, 100.6 / 255, 1.0, 1.7], np.float32)
    out = to_uint8(np.broadcast_to(values, (1, 3, 1, 6)))
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, :, 0].tolist() == [0, 0, 100, 101, 255, 255]
    image = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
    assert np.array_equal(to_uint8(to_float(image)), image)


def test_16_bit_output_conversion():
    """Deep-colour outputs: clamped, scaled by 65535 (so 1.0 is the top level, not a wrap to
    0), rounded, channels last; 16-bit input maps back exactly."""
    values = np.array([-0.2, 0.0, 1000.4 / 65535, 1000.6 / 65535, 1.0, 1.7], np.float32)
    out = to_uint16(np.broadcast_to(values, (1, 3, 1, 6)))
    assert out.shape == (1, 1, 6, 3) and out.dtype == np.uint16 and out.flags.c_contiguous
    assert out[0, 0, :, 0].tolist() == [0, 0, 1000, 1001, 65535, 65535]
    image = (np.arange(24, dtype=np.uint16) * 2731).reshape(1, 2, 4, 3)  # up to 62813
    x = to_float(image)
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 4)
    assert np.array_equal(x, image.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(65535))
    assert to_float(np.full((1, 1, 1, 3), 65535, np.uint16)).max() == 1.0
    assert np.array_equal(to_uint16(x), image)
    for dtype in (np.uint8, np.uint16):
        samples = to_samples(x, dtype)
        assert samples.dtype == dtype
        assert np.array_equal(samples, to_uint16(x) if dtype == np.uint16 else to_uint8(x))


@pytest.mark.parametrize("size", [(0, 5), (5, 0)])
def test_a_frame_without_pixels_is_refused(size):
    with pytest.raises(ValueError, match=rf"at least one pixel, got {size[0]}x{size[1]}"):
        padded_size(*size)


def test_network_input_is_float32_channels_first():
    """float64 would double the memory and round every convolution differently."""
    image = np.arange(24, dtype=np.uint8).reshape(1, 2, 4, 3)
    x = to_float(image)
    assert x.dtype == np.float32 and x.shape == (1, 3, 2, 4) and x.flags.c_contiguous
    assert np.array_equal(x, image.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load_model(tiny_checkpoint, mid_channels=16, num_blocks=1)


def upscale_video(path, out, model) -> np.ndarray:
    source = open_source(path)
    config = RunConfig()
    with open_output(source, out, config) as sink:
        upscale(source, sink, TorchRunner(model), config)
    return read_frames(out)


def test_a_7x9_video_upscales_to_28x36_like_the_model_on_padded_frames(tmp_path, media,
                                                                        tiny_model, one_thread):
    frames = media.synthetic_frames(2, width=9, height=7)
    path = media.write_video(tmp_path / "tiny.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    out = upscale_video(path, tmp_path / "out", tiny_model)
    assert out.shape == (2, 28, 36, 3)
    lr = np.stack(frames).astype(np.float32) / 255  # [T, 7, 9, 3]
    rows = [reflect_index(i, 7) for i in range(64)]
    cols = [reflect_index(j, 9) for j in range(64)]
    padded = torch.from_numpy(lr[:, rows][:, :, cols].transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected = tiny_model(padded[None])[0, :, :, :28, :36]
    expected = (expected.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(int) - expected).max() <= PADDED_CROP_MAX_LEVELS


def test_a_240x135_video_upscales_to_960x540_aligned(tmp_path, media, tiny_model, one_thread):
    frames = media.synthetic_frames(1, width=240, height=135)
    path = media.write_video(tmp_path / "wide.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    out = upscale_video(path, tmp_path / "out.mkv", tiny_model)
    assert out.shape == (1, 540, 960, 3)
    bicubic = cv2.resize(frames[0], (960, 540), interpolation=cv2.INTER_CUBIC)
    mse = np.mean((out[0].astype(float) - bicubic) ** 2)
    shifted = np.mean((out[0, 4:].astype(float) - bicubic[:-4]) ** 2)  # one LR row off
    print(f"PSNR vs bicubic: {10 * np.log10(255**2 / mse):.1f} dB aligned, "
          f"{10 * np.log10(255**2 / shifted):.1f} dB one row off")
    assert 10 * np.log10(255**2 / mse) >= PADDED_ALIGNED_MIN_PSNR_DB
