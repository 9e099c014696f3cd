"""Upscale a clip with any backend: batched encode and flow, the recurrence, batched decode."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hirn.core.constants import SCALE
from hirn.core.graphs import step_graph_name
from hirn.core.recurrence import walk
from hirn.core.schedule import BRANCHES, SPATIAL, FeatureRef, FlowRef, make_plan, mirrored

from .backends.base import Runner


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def is_mirror_extended(frames: np.ndarray) -> bool:
    """An even-length clip equal to its own time reversal (forward flows come free)."""
    return len(frames) % 2 == 0 and np.array_equal(frames, frames[::-1])


def upscale_clip(runner: Runner, frames: np.ndarray, batch_size: int = 4,
                 keep: slice = slice(None)) -> np.ndarray:
    """Run the whole model on one clip.

    Args:
        runner: the backend.
        frames: ``[T, 3, H, W]`` float32 RGB in [0, 1]; H and W even, >= 64.
        batch_size: frames per call of the batchable graphs (encode, flow, decode).
        keep: the frames to decode (a window's written frames); the others are context
            only, so their HR output (the costliest graph) is never computed.

    Returns:
        ``[len(keep), 3, 4H, 4W]`` float32, not clamped.
    """
    t, _, h, w = frames.shape
    plan = make_plan(t)
    lq = [runner.from_numpy(frames[i:i + 1]) for i in range(t)]

    features: dict[FeatureRef, object] = {}
    for batch in _batches(list(range(t)), batch_size):
        spatial = runner.run("encode", runner.concat([lq[i] for i in batch]))
        for i, feature in zip(batch, runner.split(spatial)):
            features[FeatureRef(SPATIAL, i)] = feature

    flows = _compute_flows(runner, lq, plan.flows(), is_mirror_extended(frames), batch_size)
    zero_feature = runner.zeros("feature", 1, h, w)
    walk(plan, features, flows,
         run_step=lambda step, inputs: runner.run(_graph_of(step), *inputs),
         compose=lambda a, b: runner.run("compose", a, b),
         zero_feature=zero_feature, zero_flow=runner.zeros("flow", 1, h, w))

    outputs = []
    for batch in _batches(list(range(t))[keep], batch_size):
        per_frame = [plan.decode_inputs(i) for i in batch]
        inputs = [runner.concat([lq[i] for i in batch])]
        for k in range(1 + len(BRANCHES)):
            inputs.append(runner.concat([zero_feature if refs[k] is None else features[refs[k]]
                                         for refs in per_frame]))
        outputs.append(runner.to_numpy(runner.run("decode", *inputs)))
    if not outputs:
        return np.zeros((0, 3, SCALE * h, SCALE * w), np.float32)
    return np.concatenate(outputs, axis=0)


def _graph_of(step) -> str:
    return step_graph_name(step.branch, step.aligned)


def _compute_flows(runner: Runner, lq: list, needed: tuple[FlowRef, ...], mirror: bool,
                   batch_size: int) -> dict[FlowRef, object]:
    """Every flow the plan reads, batched; a mirrored clip reuses its backward flows."""
    num_frames = len(lq)
    source = {f: (mirrored(f, num_frames) if mirror else f) for f in needed}
    unique = sorted(set(source.values()))
    computed = {}
    for batch in _batches(unique, batch_size):
        refs = runner.concat([lq[f.frames()[0]] for f in batch])
        supps = runner.concat([lq[f.frames()[1]] for f in batch])
        for f, flow in zip(batch, runner.split(runner.run("flow", refs, supps))):
            computed[f] = flow
    return {f: computed[src] for f, src in source.items()}
