"""Refuse, before any work, windows that cannot fit in the device's memory.

A window holds every frame's four feature maps, its flows and its LR frame until the
window is decoded, and the decode graph holds at least two 64-channel maps at the output
resolution for each frame of its batch. Those are known exactly from the plan, the
backend's dtypes and the batch size, so together they are a lower bound of what a window
needs (``benchmarks/results/window_memory.md`` compares it with measured memory). When even
that exceeds the free memory, the run would end in an out-of-memory error after minutes of
work (CUDA), or the kernel would kill it without a word (Linux, CPU): say so at once, with
the batch size or window that fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from hirn.core.errors import WindowMemoryError
from hirn.core.schedule import make_plan
from hirn.runtime.backends import Runner
from hirn.runtime.padding import SCALE, padded_size
from hirn.runtime.windows import GOP_FRAMES, max_frames_read

_GIB = 2**30
_HR_CHANNELS = 64  # conv_hr's input and output at the output resolution (train/hirn.py)
_FLOAT32 = 4  # bytes: frames and flows are FP32 in every precision (hirn.core.graphs)
_FLOW_CHANNELS = 2


def window_bytes(runner: Runner, frames: int, height: int, width: int,
                 batch_size: int = 1) -> int:
    """What a window of ``frames`` LR frames of this size (padded) needs at least: LR
    frames, spatial and branch features, the flows the plan reads (a mirrored clip shares
    half of them: 2 channels of the ~260 held per pixel), and the decode of one batch."""
    h, w = padded_size(height, width)
    features, flows = plan_size(frames)
    feature_map = runner.mid_channels * runner.element_size * h * w
    flow = _FLOW_CHANNELS * _FLOAT32 * h * w
    lq = 3 * _FLOAT32 * h * w
    hr_map = _HR_CHANNELS * runner.element_size * h * w * SCALE**2
    decode = min(batch_size, frames) * 2 * hr_map
    return frames * (lq + feature_map) + features * feature_map + flows * flow + decode


# Plans up to this many frames are built whole (a few milliseconds); longer ones are counted
# by whole groups, since a plan of 100,000 frames takes seconds to build.
_BUILT_FRAMES = 4 * GOP_FRAMES


@lru_cache(maxsize=256)
def plan_size(frames: int) -> tuple[int, int]:
    """(branch features computed, flows read) by the plan of a ``frames``-frame clip.

    Counted on the plan itself up to a few groups; beyond, the plan repeats with HiRN's
    groups of :data:`GOP_FRAMES` (the linear branches add the same per frame, the group
    branch the same per group), so a long clip adds whole groups' worth to a short one.
    """
    if frames <= _BUILT_FRAMES:
        plan = make_plan(frames)
        return len(plan.computed()), len(plan.flows())
    # whole groups off, leaving a clip that is built whole even one group longer
    groups = -(-(frames - _BUILT_FRAMES + GOP_FRAMES) // GOP_FRAMES)
    short = frames - groups * GOP_FRAMES
    base, longer = plan_size(short), plan_size(short + GOP_FRAMES)
    return tuple(b + groups * (n - b) for b, n in zip(base, longer))


def available_bytes(runner: Runner) -> int | None:
    """Free memory where the runner keeps its arrays (a CUDA device, or this host); None
    when it cannot be read."""
    if str(runner.device).startswith("cuda"):
        import torch

        device = torch.device(str(runner.device))
        if device.index is None:  # "cuda": the current device, where its arrays go
            device = torch.device("cuda", torch.cuda.current_device())
        # PyTorch's cache (an earlier video's windows) is free to this run too
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    return host_available_bytes()


def host_available_bytes() -> int | None:
    """MemAvailable of Linux, or less when a cgroup (a container) limits this process."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    if match is None:
        return None
    available = int(match.group(1)) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to honour
    return available


def frames_read(window: int, overlap: int, min_frames: int, frame_count: int | None) -> int:
    """The most frames one window reads, in a video of ``frame_count`` frames if known."""
    most = max_frames_read(window, overlap, min_frames)
    return min(most, frame_count) if frame_count else most


def check_window_fits(runner: Runner, height: int, width: int, window: int, overlap: int,
                      batch_size: int, min_frames: int, frame_count: int | None,
                      available: int | None = None) -> None:
    """Raise :class:`WindowMemoryError` when the largest window cannot fit in memory.

    The advice prefers what leaves the output unchanged (a smaller ``--batch-size``), then
    shorter windows, then no overlap.

    Args:
        available: free bytes (None: read them from the runner's device).
    """
    available = available_bytes(runner) if available is None else available
    if available is None:
        return

    def need(w: int, ov: int, batch: int) -> int:
        return window_bytes(runner, frames_read(w, ov, min_frames, frame_count), height,
                            width, batch)

    def fits(w: int, ov: int, batch: int) -> bool:
        return need(w, ov, batch) <= available

    needed = need(window, overlap, batch_size)
    if needed <= available:
        return
    asked = (f"windows of {window} + 2 x {overlap} frames, decoded {batch_size} at a time, "
             f"do not fit in memory ({width}x{height} frames need at least "
             f"{needed / _GIB:.1f} GiB, {available / _GIB:.1f} GiB is free)")
    # the need grows with the batch and the window: bisection finds the largest that fits
    advice = None
    if (batch := _largest(batch_size - 1, lambda b: fits(window, overlap, b))) is not None:
        advice = f"--batch-size {batch}"
    elif (w := _largest(window - 1, lambda w: fits(w, overlap, 1))) is not None:
        advice = f"--batch-size 1 --window {w}"
    elif overlap and (w := _largest(window, lambda w: fits(w, 0, 1))) is not None:
        advice = f"--batch-size 1 --window {w} --overlap 0"
    if advice is not None:
        raise WindowMemoryError(f"{asked}: use {advice}; nothing was written")
    shortest = min(min_frames, frame_count or min_frames)
    raise WindowMemoryError(
        f"{asked}, and even the shortest window ({shortest} frames, what HiRN's groups "
        f"need) does not: use a machine or GPU with more memory, FP16 on a GPU "
        f"(--precision fp16), or a smaller input; nothing was written")


def _largest(most: int, fits: Callable[[int], bool]) -> int | None:
    """The largest n in [1, most] with ``fits(n)``, for a ``fits`` true up to some n and
    false above it; None when even 1 does not fit."""
    if most < 1 or not fits(1):
        return None
    low, high = 1, most  # fits(low) holds; the answer is within [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low
