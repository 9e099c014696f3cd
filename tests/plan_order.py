"""The driver as it ran before the liveness order: an oracle for the tests of the order the
driver runs in, and a baseline of benchmarks/window_memory.py. Not part of hirn."""

from __future__ import annotations

import numpy as np

from hirn.core.constants import SCALE
from hirn.core.liveness import make_schedule
from hirn.core.recurrence import walk
from hirn.core.schedule import SPATIAL, FeatureRef
from hirn.runtime.backends.base import Runner
from hirn.runtime.driver import batches, compute_flows, graph_of, is_mirror_extended


def upscale_clip_in_plan_order(runner: Runner, frames: np.ndarray, batch_size: int = 4,
                               keep: slice = slice(None)) -> np.ndarray:
    """:func:`upscale_clip` as it ran before the liveness order: encode all, flow all, walk
    the plan in its own order keeping every map, then decode. The same output to the bit;
    the tests' baseline (tests/runtime/test_execution_order.py) and
    ``benchmarks/window_memory.py``'s."""
    t, _, h, w = frames.shape
    plan = make_schedule(t).plan
    features = {}
    for batch in batches(list(range(t)), batch_size):
        maps = runner.split(runner.run("encode", runner.from_numpy(frames[batch[0]:batch[-1] + 1])))
        features.update({FeatureRef(SPATIAL, i): m for i, m in zip(batch, maps)})
    flows = compute_flows(runner, lambda fs: runner.from_numpy(frames[list(fs)]), t,
                           plan.flows(), is_mirror_extended(frames), batch_size)
    zero = runner.zeros("feature", 1, h, w)
    walk(plan, features, flows, run_step=lambda s, x: runner.run(graph_of(s), *x),
         compose=lambda a, b: runner.run("compose", a, b), zero_feature=zero,
         zero_flow=runner.zeros("flow", 1, h, w))
    outputs = [np.zeros((0, 3, SCALE * h, SCALE * w), np.float32)]
    for batch in batches(list(range(t))[keep], batch_size):
        maps = [[zero if r is None else features[r] for r in plan.decode_inputs(i)]
                for i in batch]
        inputs = [runner.from_numpy(frames[batch[0]:batch[-1] + 1])]
        inputs += [runner.concat([m[k] for m in maps]) for k in range(len(maps[0]))]
        outputs.append(runner.to_numpy(runner.run("decode", *inputs)))
    return np.concatenate(outputs, axis=0)
