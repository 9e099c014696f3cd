"""Refuse, before any work, windows whose features cannot fit in the device's memory.

A window holds every frame's four feature maps, its flows and its LR frame until the
window is decoded. That much is known exactly from the plan and the backend's dtypes, so it
is a lower bound of what a window needs (the graphs' own working memory comes on top).
When even that exceeds the free memory, the run would end in an out-of-memory error
after minutes of work (CUDA), or the kernel would kill it without a word (Linux, CPU):
say so at once, with the largest ``--window`` that fits.
"""

from __future__ import annotations

import re
from pathlib import Path

from hirn.runtime.backends import Runner
from hirn.runtime.errors import MediaError
from hirn.runtime.padding import padded_size
from hirn.runtime.schedule import make_plan
from hirn.runtime.windows import effective_overlap

_GIB = 2**30


class WindowMemoryError(MediaError):
    """A window of the requested size cannot fit in the memory this run has."""


def window_bytes(runner: Runner, frames: int, height: int, width: int) -> int:
    """What the driver holds at least for a window of ``frames`` LR frames of this size
    (padded): LR frames, spatial and branch features, and the flows the plan reads (a
    mirrored clip shares half of its flows: 2 channels of the ~260 held per pixel)."""
    h, w = padded_size(height, width)
    plan = make_plan(frames)
    # bytes of one pixel, times the pixels (allocating whole maps here would cost gigabytes)
    feature = _nbytes(runner.zeros("feature", 1, 1, 1)) * h * w
    flow = _nbytes(runner.zeros("flow", 1, 1, 1)) * h * w
    lq = 3 * h * w * 4  # float32 frames on the device
    return (frames * (lq + feature) + len(plan.computed()) * feature
            + len(plan.flows()) * flow)


def available_bytes(runner: Runner) -> int | None:
    """Free memory where the runner keeps its arrays (a CUDA device, or this host); None
    when it cannot be read."""
    device = getattr(runner.zeros("flow", 1, 1, 1), "device", None)
    if getattr(device, "type", None) == "cuda":
        import torch

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
    """The most frames one window reads (see :func:`hirn.runtime.windows.iter_windows`)."""
    most = max(window + 2 * effective_overlap(window, overlap, min_frames), min_frames)
    return min(most, frame_count) if frame_count else most


def check_window_fits(runner: Runner, height: int, width: int, window: int, overlap: int,
                      min_frames: int, frame_count: int | None,
                      available: int | None = None) -> None:
    """Raise :class:`WindowMemoryError` when the largest window cannot fit in memory.

    Args:
        available: free bytes (None: read them from the runner's device).
    """
    available = available_bytes(runner) if available is None else available
    if available is None:
        return

    def need(w: int, ov: int = overlap) -> int:
        return window_bytes(runner, frames_read(w, ov, min_frames, frame_count), height, width)

    needed = need(window)
    if needed <= available:
        return
    where = (f"{width}x{height} frames need at least {needed / _GIB:.1f} GiB, "
             f"{available / _GIB:.1f} GiB is free")
    asked = f"windows of {window} + 2 x {overlap} frames do not fit in memory ({where})"
    shorter = next((w for w in range(window - 1, 0, -1) if need(w) <= available), None)
    if shorter is not None:
        raise WindowMemoryError(f"{asked}: use --window {shorter} or less; nothing was written")
    no_context = next((w for w in range(window, 0, -1) if need(w, 0) <= available), None)
    if overlap and no_context is not None:
        raise WindowMemoryError(f"{asked}: use --window {no_context} --overlap 0 or less; "
                                f"nothing was written")
    raise WindowMemoryError(
        f"{asked}, and even the shortest window ({min(min_frames, frame_count or min_frames)} "
        f"frames, what HiRN's groups need) does not: use a machine or GPU with more memory, "
        f"FP16 on a GPU (--precision fp16), or a smaller input; nothing was written")


def _nbytes(array) -> int:
    """Bytes of a numpy array, torch tensor or onnxruntime OrtValue."""
    if hasattr(array, "nbytes"):
        return int(array.nbytes)
    return int(array.numpy().nbytes)  # an OrtValue on the CPU
