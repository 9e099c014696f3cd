"""Upscale a clip with any backend: batched encode and flow, the recurrence, batched decode,
in the order of :mod:`hirn.core.liveness`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from hirn.core.constants import SCALE
from hirn.core.graphs import step_graph_name
from hirn.core.liveness import make_schedule
from hirn.core.recurrence import walk
from hirn.core.schedule import FlowRef, mirrored

from .backends.base import Runner
from .padding import crop_output, to_samples


def batches(items: list, size: int) -> Iterator[list]:
    """``items`` in consecutive lists of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def is_mirror_extended(frames: np.ndarray) -> bool:
    """An even-length clip equal to its own time reversal (forward flows come free)."""
    return len(frames) % 2 == 0 and np.array_equal(frames, frames[::-1])


def upscale_clip(runner: Runner, frames: np.ndarray, batch_size: int = 4,
                 keep: slice = slice(None),
                 on_output: Callable[[int, np.ndarray], None] | None = None,
                 recompute_backward: int | None = None) -> np.ndarray | None:
    """Run the whole model on one clip, in the order of :mod:`hirn.core.liveness`.

    Frames wait in host memory and go to the device per call. The backward branch runs
    over the clip first; then the other branches and the decode go a group of pictures at
    a time, and every feature map, flow and chain is dropped after its last reader (the
    spatial maps are encoded again, by the same batches, rather than kept).

    Args:
        runner: the backend.
        frames: ``[T, 3, H, W]`` float32 RGB in [0, 1]; H and W even, >= 64.
        batch_size: frames per call of the batchable graphs (encode, flow, decode).
        keep: the frames to decode (a window's written frames); the others are context
            only, so their HR output (the costliest graph) is never computed, nor the steps
            that only it reads.
        on_output: ``(index, hr)`` for each decoded batch ``[B, 3, 4H, 4W]`` float32, its
            first frame being ``index`` in ``keep``; the output is then not held here.
        recompute_backward: keep two backward maps in this many frames and compute the
            others again when read (less memory, the same output; None: keep them all).

    Returns:
        ``[len(keep), 3, 4H, 4W]`` float32, not clamped (None with ``on_output``).
    """
    t, _, h, w = frames.shape
    kept = list(range(t))[keep]
    schedule = make_schedule(t, tuple(kept), batch_size, encode_batch=batch_size,
                             recompute_backward=recompute_backward)

    def lq(indices: tuple[int, ...]) -> object:
        first = indices[0]
        if indices == tuple(range(first, first + len(indices))):
            return runner.from_numpy(frames[first:first + len(indices)])  # a view: no copy
        return runner.from_numpy(frames[list(indices)])

    out = None
    if on_output is None:
        out = np.empty((len(kept), 3, SCALE * h, SCALE * w), np.float32)
    position = {frame: n for n, frame in enumerate(kept)}

    def decode(batch: tuple[int, ...], maps: list[list]) -> None:
        inputs = [lq(batch)] + [runner.concat([m[k] for m in maps]) for k in range(len(maps[0]))]
        hr = runner.to_numpy(runner.run("decode", *inputs))
        first = position[batch[0]]
        if on_output is None:
            out[first:first + len(batch)] = hr
        else:
            on_output(first, hr)

    # The plan's flows in the usual batches (the same bits), then only those still read.
    flows = compute_flows(runner, lq, t, schedule.plan.flows(), is_mirror_extended(frames),
                           batch_size)
    flows = {f: flows[f] for f in schedule.flows()}
    zero_feature = runner.zeros("feature", 1, h, w)
    walk(schedule.plan, {}, flows,
         run_step=lambda step, inputs: runner.run(graph_of(step), *inputs),
         compose=lambda a, b: runner.run("compose", a, b),
         zero_feature=zero_feature, zero_flow=runner.zeros("flow", 1, h, w),
         schedule=schedule,
         encode=lambda batch: runner.split(runner.run("encode", lq(batch))),
         decode=decode)
    return out


class SampleCollector:
    """Takes :func:`upscale_clip`'s decoded batches (``on_output=collector.put``) as 8- or
    16-bit samples ``[T, 4 height, 4 width, 3]``, cropped to the LR ``height x width``: the
    output of a window then waits in a quarter (or half) of its FP32 size. Frames whose
    output holds NaN or Inf are listed in ``bad`` (counted from 0), their samples not set."""

    def __init__(self, frames: int, height: int, width: int, dtype=np.uint8):
        self.height, self.width, self.dtype = height, width, dtype
        self.samples = np.empty((frames, SCALE * height, SCALE * width, 3), dtype)
        self.bad: list[int] = []

    def put(self, first: int, hr: np.ndarray) -> None:
        hr = crop_output(hr, self.height, self.width)
        finite = np.isfinite(hr).reshape(len(hr), -1).all(axis=1)
        if finite.all():
            self.samples[first:first + len(hr)] = to_samples(hr, self.dtype)
        else:
            self.bad.extend(int(first + i) for i in np.flatnonzero(~finite))


def graph_of(step) -> str:
    """The per-step graph that computes ``step`` of the plan."""
    return step_graph_name(step.branch, step.aligned)


def compute_flows(runner: Runner, lq: Callable[[tuple[int, ...]], object], num_frames: int,
                   needed: tuple[FlowRef, ...], mirror: bool,
                   batch_size: int) -> dict[FlowRef, object]:
    """Every flow the plan reads, batched; a mirrored clip reuses its backward flows.
    ``lq(frames)`` puts those frames on the device."""
    source = {f: (mirrored(f, num_frames) if mirror else f) for f in needed}
    unique = sorted(set(source.values()))
    computed = {}
    for batch in batches(unique, batch_size):
        refs = lq(tuple(f.frames()[0] for f in batch))
        supps = lq(tuple(f.frames()[1] for f in batch))
        for f, flow in zip(batch, runner.split(runner.run("flow", refs, supps))):
            computed[f] = flow
    return {f: computed[src] for f, src in source.items()}
