"""Windows that cannot fit in memory are refused before any work, with the window that fits."""

import cv2
import numpy as np
import pytest
import torch
from support import run_cli

from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.memory import (
    WindowMemoryError,
    check_window_fits,
    frames_read,
    host_available_bytes,
    window_bytes,
)
from hirn.runtime.windows import GOP_FRAMES
from hirn.train import HiRN


@pytest.fixture(scope="module")
def runner():
    torch.manual_seed(0)
    return TorchRunner(HiRN(mid_channels=16, num_blocks=1))


def test_window_bytes_counts_every_frame_s_features(runner):
    """At least four FP32 feature maps per frame; linear in the frames and in the pixels;
    the decode batch adds two 64-channel maps at 4x the size per frame."""
    one = window_bytes(runner, 16, 64, 64)
    assert window_bytes(runner, 16, 64, 64, batch_size=3) - one == 2 * 2 * 64 * 16 * 64 * 64 * 4
    assert one >= 16 * 4 * 16 * 64 * 64 * 4
    step = window_bytes(runner, 32, 64, 64) - one
    assert step >= 16 * 4 * 16 * 64 * 64 * 4
    assert window_bytes(runner, 48, 64, 64) - window_bytes(runner, 32, 64, 64) == \
        pytest.approx(step, rel=0.05)
    assert window_bytes(runner, 16, 128, 128) == 4 * one
    assert window_bytes(runner, 16, 7, 9) == one  # padded to 64x64 first


def test_frames_read_follows_the_windows():
    assert frames_read(24, 4, GOP_FRAMES, None) == 32
    assert frames_read(4, 0, GOP_FRAMES, None) == 16  # widened for HiRN's 16-frame groups
    assert frames_read(24, 4, GOP_FRAMES, 10) == 10   # a short video


def _advice(error) -> dict[str, int]:
    """``{"--batch-size": 1, "--window": 12}`` from the message's ``use ...`` advice."""
    words = str(error.value).split(": use ")[1].split(";")[0].split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def test_a_window_that_fits_passes_and_one_that_does_not_gets_advice_that_fits(runner):
    def need(window, batch, overlap=4):
        return window_bytes(runner, frames_read(window, overlap, GOP_FRAMES, None), 180, 320,
                            batch)

    check_window_fits(runner, 180, 320, 24, 4, 4, GOP_FRAMES, None, available=need(24, 4))
    # a smaller batch is enough: the output stays the same
    with pytest.raises(WindowMemoryError, match="use --batch-size") as error:
        check_window_fits(runner, 180, 320, 24, 4, 4, GOP_FRAMES, None,
                          available=need(24, 4) - 1)
    batch = _advice(error)["--batch-size"]
    assert need(24, batch) <= need(24, 4) - 1 < need(24, batch + 1)
    assert "nothing was written" in str(error.value)
    # batch 1 is not enough: a shorter window, the longest that fits
    available = need(24, 1) - 1
    with pytest.raises(WindowMemoryError, match="--window") as error:
        check_window_fits(runner, 180, 320, 24, 4, 4, GOP_FRAMES, None, available=available)
    advice = _advice(error)
    assert advice["--batch-size"] == 1
    assert need(advice["--window"], 1) <= available < need(advice["--window"] + 1, 1)


def test_when_no_window_fits_the_message_says_what_to_do(runner):
    with pytest.raises(WindowMemoryError, match="even the shortest window .16 frames"):
        check_window_fits(runner, 180, 320, 24, 4, 4, GOP_FRAMES, None, available=2**20)


def test_host_memory_is_read():
    available = host_available_bytes()
    assert available is not None and available > 2**26


def test_hirn_run_refuses_frames_too_large_for_this_machine(tmp_path, tiny_checkpoint, runner):
    """Four flat 8000x8000 frames: the tiny model's features alone outgrow this machine."""
    height = width = 8000
    need = window_bytes(runner, 4, height, width, batch_size=1)
    available = host_available_bytes()
    if available is None or need < 2 * available:
        pytest.skip(f"this machine has {available} bytes free: the frames would fit")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((height, width, 3), 40 * i, np.uint8))
    result = run_cli("hirn-run", str(frames), "-o", str(tmp_path / "out"), "--checkpoint",
                     str(tiny_checkpoint), "--quiet")
    assert result.returncode == 1, result.stderr
    assert "do not fit in memory" in result.stderr and "even the shortest window" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
    assert len(list(frames.iterdir())) == 4
