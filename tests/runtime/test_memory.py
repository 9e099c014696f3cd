"""Windows that cannot fit in memory are refused before any work, with the window that fits."""

import cv2
import numpy as np
import pytest
import torch
from support import WINDOW_BOUND_MIN_SHARE, run_cli

from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.memory import (
    RECOMPUTE_EVERY,
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


@pytest.fixture(scope="module")
def wide():
    """The published width (64 channels): what a held map costs; one block is enough."""
    torch.manual_seed(0)
    return TorchRunner(HiRN(mid_channels=64, num_blocks=1))


def test_window_bytes_follows_the_liveness_order(wide):
    """Each extra frame holds one backward map until its decode, its LR frame and its
    flows: at most 300 bytes per LR pixel in FP32 where the plan order held four maps
    (1,024 bytes) and more; linear in the pixels; a larger decode batch costs at least
    three 64-channel maps at 4x per frame."""
    runner = wide
    fm = 64 * 4 * 64 * 64  # one feature map, FP32, 64x64
    one = window_bytes(runner, 32, 64, 64)
    step = (window_bytes(runner, 64, 64, 64) - one) / 32
    assert fm <= step <= 300 * 64 * 64
    assert window_bytes(runner, 80, 64, 64) - window_bytes(runner, 64, 64, 64) == \
        pytest.approx(16 * step, rel=0.05)
    assert window_bytes(runner, 16, 128, 128) == 4 * window_bytes(runner, 16, 64, 64)
    assert window_bytes(runner, 16, 7, 9) == window_bytes(runner, 16, 64, 64)  # padded first
    hr_map = 64 * 4 * 64 * 64 * 16
    three, single = (window_bytes(runner, 16, 64, 64, batch_size=b) for b in (3, 1))
    assert three >= 3 * 3 * hr_map and three > single
    # fewer written frames: fewer outputs held, never more memory
    assert window_bytes(runner, 32, 64, 64, keep=slice(4, 28)) <= one


def test_bound_against_a_measured_window(wide):
    """One window in a fresh process: the bound is below its measured peak RSS growth (it
    never asks for more than a window needs) and within WINDOW_BOUND_MIN_SHARE of it."""
    code = (
        # the peak is this process's own: ru_maxrss would keep the big test process's peak
        # across fork and exec, so the high-water mark is reset and read from /proc
        "import sys, numpy as np, torch\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "from hirn.runtime.backends.torch_backend import TorchRunner\n"
        "from hirn.runtime.driver import SampleCollector, upscale_clip\n"
        "from hirn.train import HiRN\n"
        "torch.manual_seed(0); torch.set_num_threads(1)\n"
        "runner = TorchRunner(HiRN(mid_channels=64, num_blocks=1))\n"
        "clip = np.random.default_rng(0).random((int(sys.argv[1]), 3, 64, 64), np.float32)\n"
        "def run(frames, batch):\n"  # as hirn-run keeps a window's output: 8-bit samples
        "    samples = SampleCollector(len(frames), 64, 64)\n"
        "    upscale_clip(runner, frames, batch, on_output=samples.put)\n"
        "run(clip[:2], 1)\n"  # first-call allocations, not the window's
        "run(clip, 4)\n"
        "print(1024 * int(next(line for line in open('/proc/self/status')\n"
        "                      if line.startswith('VmHWM')).split()[1]))\n")
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    # glibc raises its mmap threshold as large blocks are freed, after which maps of a few MB
    # come from the heap and fragment it: peak RSS then moved by +-30% from run to run
    # (95-168 MiB here). A fixed threshold returns every map of 1 MiB or more on free, so
    # the peak is the window's own (145-146 MiB in three runs).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}

    def peak(n: int) -> int:
        return int(subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True,
                                  text=True, check=True, env=env).stdout)

    # the median of three growths; two children at a time (each peak is its own process's,
    # and each runs one thread), which halves the test's time on two cores
    with ThreadPoolExecutor(2) as pool:
        peaks_of = list(pool.map(peak, [16, 2] * 3))
    growths = sorted(big - small for big, small in zip(peaks_of[::2], peaks_of[1::2]))
    peaks = [0, growths[1]]
    for n, measured in zip((16,), peaks[1:]):
        bound = window_bytes(wide, n, 64, 64, 4) - window_bytes(wide, 2, 64, 64, 4)
        print(f"{n} frames: bound {bound / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
        assert WINDOW_BOUND_MIN_SHARE * measured <= bound <= measured


def test_frames_read_follows_the_windows():
    assert frames_read(24, 4, GOP_FRAMES, None) == 32
    assert frames_read(4, 0, GOP_FRAMES, None) == 16  # widened for HiRN's 16-frame groups
    assert frames_read(24, 4, GOP_FRAMES, 10) == 10   # a short video


def _advice(error) -> dict[str, int]:
    """``{"--batch-size": 1, "--window": 12}`` from the message's ``use ...`` advice."""
    words = str(error.value).split(": use ")[1].split(";")[0].split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def test_a_window_that_fits_passes_and_one_that_does_not_gets_advice_that_fits(runner):
    def need(window, batch, overlap=4):  # with the backward maps recomputed when less
        return min(window_bytes(runner, frames_read(window, overlap, GOP_FRAMES, None), 180,
                                320, batch, recompute_backward=r)
                   for r in (None, RECOMPUTE_EVERY))

    kept = window_bytes(runner, frames_read(24, 4, GOP_FRAMES, None), 180, 320, 4)
    assert check_window_fits(runner, 180, 320, 24, 4, 4, GOP_FRAMES, None,
                             available=kept) is None
    assert check_window_fits(runner, 180, 320, 24, 4, 4, GOP_FRAMES, None,
                             available=need(24, 4)) == (RECOMPUTE_EVERY if need(24, 4) < kept
                                                        else None)
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
                     str(tiny_checkpoint), "--quiet", "--tile", "none")  # no tiles: refused
    assert result.returncode == 1, result.stderr
    assert "do not fit in memory" in result.stderr and "even the shortest window" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
    assert len(list(frames.iterdir())) == 4
