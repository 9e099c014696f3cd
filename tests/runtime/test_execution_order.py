"""Memory follows the plan without changing a bit: the driver and the model, walking the
liveness order, give exactly what the plan-order walk (keeping every map) gives."""

import numpy as np
import pytest
import torch
from plan_order import upscale_clip_in_plan_order

from hirn.core.recurrence import walk
from hirn.core.schedule import SPATIAL, FeatureRef, make_plan
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import HiRN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    return HiRN(mid_channels=16, num_blocks=1).eval()


@pytest.mark.parametrize("t, batch, keep", [(8, 3, slice(None)), (17, 3, slice(2, 15))])
def test_driver_output_is_bit_identical_to_the_plan_order(model, t, batch, keep):
    """GOP 7 (8 frames, with its uncomputed frame) and GOP 16 with context frames, encode
    batches straddling the groups; streamed, and with the backward maps recomputed from two
    kept in 5 frames."""
    clip = np.random.default_rng(t).random((t, 3, 64, 64), dtype=np.float32)
    runner = TorchRunner(model)
    expected = upscale_clip_in_plan_order(runner, clip, batch, keep)
    assert np.array_equal(upscale_clip(runner, clip, batch, keep), expected)
    streamed = {}
    assert upscale_clip(runner, clip, batch, keep,
                        on_output=lambda i, hr: streamed.update({i: hr})) is None
    assert np.array_equal(np.concatenate([streamed[i] for i in sorted(streamed)]), expected)
    assert np.array_equal(upscale_clip(runner, clip, batch, keep, recompute_backward=5),
                          expected)


@pytest.mark.parametrize("t", [8, 17])
def test_model_forward_is_bit_identical_to_the_plan_order(model, t):
    lq = torch.rand(1, t, 3, 64, 64, generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        out = model(lq)
        n, _, _, h, w = lq.shape
        steps, plan = model.steps, make_plan(t)
        spatial = steps.encode(lq.reshape(n * t, 3, h, w)).view(n, t, -1, h, w)
        feats = {FeatureRef(SPATIAL, i): spatial[:, i] for i in range(t)}
        zero = spatial.new_zeros(spatial[:, 0].shape)
        walk(plan, feats, model.compute_flows(lq),
             run_step=lambda s, x: steps.propagation[(s.branch, s.aligned)](*x),
             compose=steps.compose, zero_feature=zero, zero_flow=lq.new_zeros(n, 2, h, w))
        expected = torch.stack([steps.decode(lq[:, i], *(zero if r is None else feats[r]
                                                          for r in plan.decode_inputs(i)))
                                for i in range(t)], dim=1)
    assert torch.equal(out, expected)
