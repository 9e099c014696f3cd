"""Refuse, before any work, windows that cannot fit in the device's memory.

The driver runs a window in the order of :mod:`hirn.core.liveness` and drops every feature
map, flow and chain after its last reader; the same schedule, walked here with each value's
size and what each call holds meanwhile (measured per graph), gives the window's peak
memory without running it (``benchmarks/results/window_memory.md`` compares it with
measured memory: it stays just below). When that exceeds the free memory, the run would end
in an out-of-memory error after minutes of work (CUDA), or the kernel would kill it without
a word (Linux, CPU): say so at once, with the batch size or window that fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hirn.core.errors import WindowMemoryError
from hirn.core.liveness import Decode, Encode, make_schedule
from hirn.core.schedule import FeatureRef, FlowRef, make_plan
from hirn.runtime.backends import Runner
from hirn.runtime.padding import SCALE, padded_size
from hirn.runtime.windows import GOP_FRAMES, max_frames_read

_GIB = 2**30
_HR_FEATURE_CHANNELS = 64  # conv_hr's input and output at the output resolution (model/hirn.py)
_FLOAT32 = 4  # bytes: frames and flows are FP32 in every precision (hirn.core.graphs)
_FLOW_CHANNELS = 2
_LR_CHANNELS = 3

# What one call holds beyond its inputs and output, in maps of the run's feature precision
# per frame: measured on the torch backend (CPU, FP32, published size, 96-256 px frames and
# 960x540) and rounded down, so the bound stays below what a window needs.
_STEP_MAPS = 70     # a propagation step: measured 80 at 96-256 px, about 71 at 960x540
                    # (benchmarks/results/window_memory_540p.md; the deformable convolution
                    # samples 9 taps of 128 channels, then weights them by the mask)
_ENCODE_MAPS = 4    # encode, per frame of its batch: measured 4.1
_FLOW_MAPS = 3      # SpyNet's pyramid, per flow of the batch: measured 3.2
_DECODE_HR_MAPS = 3  # decode, per frame: 64-channel maps at the output size, measured 3.3

# When a window does not fit, its backward maps are kept two in a group of pictures and the
# others computed again when read (hirn.core.liveness): the same output, for one more pass
# of the backward branch, and a window's peak grows by less per frame
# (benchmarks/results/window_memory.md).
RECOMPUTE_EVERY = GOP_FRAMES


@dataclass(frozen=True)
class _Sizes:
    """Bytes of each kind of value, for one frame of the padded size."""

    feature: int     # a feature map, in the run's precision
    flow: int        # a flow or composed chain (FP32)
    lr: int          # an LR frame (host, FP32)
    hr: int          # a decoded HR frame (FP32), until it is made samples
    samples: int     # a written frame's 8-bit samples, held until the window is written
    decode: int      # what decoding one frame holds meanwhile
    host: bool       # whether frames and outputs share the memory counted (CPU)


def window_bytes(runner: Runner, frames: int, height: int, width: int,
                 batch_size: int = 1, keep: slice | None = None,
                 recompute_backward: int | None = None) -> int:
    """The peak memory of a window of ``frames`` LR frames of this size (padded), written
    frames ``keep`` (None: all), in the driver's order (:mod:`hirn.core.liveness`): the most,
    over its tasks, of what is alive then (feature maps until their last reader, flows and
    chains, LR frames and the 8-bit samples of the frames decoded so far on the host, as
    ``hirn-run`` keeps them) plus what the running call holds meanwhile. On a GPU only the
    device's share is counted: frames and outputs wait on the host. ``recompute_backward``: as for
    :func:`~hirn.runtime.driver.upscale_clip`."""
    h, w = padded_size(height, width)
    map_bytes = runner.mid_channels * runner.element_size * h * w
    hr_map = _HR_FEATURE_CHANNELS * runner.element_size * h * w * SCALE**2
    sizes = _Sizes(feature=map_bytes, flow=_FLOW_CHANNELS * _FLOAT32 * h * w,
                   lr=_LR_CHANNELS * _FLOAT32 * h * w,
                   hr=_LR_CHANNELS * _FLOAT32 * h * w * SCALE**2,
                   samples=_LR_CHANNELS * h * w * SCALE**2,
                   decode=_DECODE_HR_MAPS * hr_map,
                   host=not str(runner.device).startswith("cuda"))
    kept = range(frames)[keep or slice(None)]
    return _peak(frames, kept.start, kept.stop, batch_size, sizes, recompute_backward)


# Windows up to this many frames are scheduled whole (milliseconds); longer ones are counted
# by whole groups, since a schedule of 100,000 frames takes seconds to build.
_BUILT_FRAMES = 4 * GOP_FRAMES


def _peak(frames: int, start: int, stop: int, batch: int, sizes: _Sizes,
          recompute: int | None = None) -> int:
    """Peak bytes of the scheduled window; past a few groups it grows by the same amount per
    group (one more backward map per frame until its decode, one more flow per frame, the
    outputs), so a long window extends the last group's growth from the longest window
    scheduled whole (two schedules in all: the advice's bisection stays fast)."""
    if frames <= _BUILT_FRAMES:
        return _simulate(frames, start, stop, batch, sizes, recompute)
    extra = frames - _BUILT_FRAMES  # frames beyond, all taken off the written ones
    built = _simulate(_BUILT_FRAMES, start, stop - extra, batch, sizes, recompute)
    shorter = _simulate(_BUILT_FRAMES - GOP_FRAMES, start, stop - extra - GOP_FRAMES, batch,
                        sizes, recompute)
    return built + extra * (built - shorter) // GOP_FRAMES


@lru_cache(maxsize=1024)
def _simulate(frames: int, start: int, stop: int, batch: int, sizes: _Sizes,
              recompute: int | None = None) -> int:
    schedule = make_schedule(frames, tuple(range(start, stop)), batch, encode_batch=batch,
                             recompute_backward=recompute)
    flows = schedule.flows()
    held = frames * sizes.lr if sizes.host else 0
    # all flows first, a batch at a time
    peak = held + len(flows) * sizes.flow + min(batch, len(flows)) * _FLOW_MAPS * sizes.feature
    held += len(flows) * sizes.flow
    for task, released in zip(schedule.tasks, schedule.release):
        if isinstance(task, Encode):
            made = len(task.frames) * sizes.feature
            meanwhile = len(task.frames) * _ENCODE_MAPS * sizes.feature
        elif isinstance(task, Decode):
            made = len(task.frames) * sizes.samples if sizes.host else 0
            meanwhile = len(task.frames) * (sizes.decode + sizes.hr)
        else:
            chains = [c for c in (task.flow_a, task.flow_b) if len(c) > 1]
            made = sizes.feature + len(chains) * sizes.flow
            meanwhile = _STEP_MAPS * sizes.feature
        peak = max(peak, held + made + meanwhile)
        held += made
        for value in released:
            if isinstance(value, FeatureRef):
                held -= sizes.feature
            elif isinstance(value, FlowRef) or len(value) > 1:
                held -= sizes.flow
    return peak


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


def leanest(need: Callable[[int | None], int], available: int | None
            ) -> tuple[int, int | None]:
    """What a window needs and the ``recompute_backward`` to run it with, from ``need``
    (bytes for a ``recompute_backward``): every backward map kept when that fits (no extra
    work), else recomputed when that needs less (the same output)."""
    kept = need(None)
    if available is None or kept <= available:
        return kept, None
    recomputed = need(RECOMPUTE_EVERY)
    return (recomputed, RECOMPUTE_EVERY) if recomputed < kept else (kept, None)


def check_window_fits(runner: Runner, height: int, width: int, window: int, overlap: int,
                      batch_size: int, min_frames: int, frame_count: int | None,
                      available: int | None = None) -> int | None:
    """Raise :class:`WindowMemoryError` when the largest window cannot fit in memory, even
    recomputing its backward maps; else the ``recompute_backward`` that makes it fit.

    The advice prefers what leaves the output unchanged (a smaller ``--batch-size``), then
    shorter windows, then no overlap.

    Args:
        available: free bytes (None: read them from the runner's device).
    """
    available = available_bytes(runner) if available is None else available
    if available is None:
        return None

    def lean(w: int, ov: int, batch: int) -> tuple[int, int | None]:
        frames = frames_read(w, ov, min_frames, frame_count)
        return leanest(lambda r: window_bytes(runner, frames, height, width, batch,
                                              recompute_backward=r), available)

    def fits(w: int, ov: int, batch: int) -> bool:
        return lean(w, ov, batch)[0] <= available

    needed, recompute = lean(window, overlap, batch_size)
    if needed <= available:
        return recompute
    asked = (f"windows of {window} + 2 x {overlap} frames, decoded {batch_size} at a time, "
             f"do not fit in memory ({width}x{height} frames need at least "
             f"{needed / _GIB:.1f} GiB, {available / _GIB:.1f} GiB is free)")
    # the need grows with the batch and the window: bisection finds the largest that fits
    advice = None
    if (batch := largest_fitting(batch_size - 1, lambda b: fits(window, overlap, b))) is not None:
        advice = f"--batch-size {batch}"
    elif (w := largest_fitting(window - 1, lambda w: fits(w, overlap, 1))) is not None:
        advice = f"--batch-size 1 --window {w}"
    elif overlap and (w := largest_fitting(window, lambda w: fits(w, 0, 1))) is not None:
        advice = f"--batch-size 1 --window {w} --overlap 0"
    if advice is not None:
        raise WindowMemoryError(f"{asked}: use {advice}; nothing was written")
    shortest = min(min_frames, frame_count or min_frames)
    raise WindowMemoryError(
        f"{asked}, and even the shortest window ({shortest} frames, what HiRN's groups "
        f"need) does not: use a machine or GPU with more memory, FP16 on a GPU "
        f"(--precision fp16), or a smaller input; nothing was written")


def largest_fitting(most: int, fits: Callable[[int], bool]) -> int | None:
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
