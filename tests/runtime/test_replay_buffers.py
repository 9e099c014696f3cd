"""CUDA-graph replays reuse their memory; the torch backend must keep copies of what it returns.

A captured CUDA graph reads its inputs from fixed buffers and writes its output into one
fixed buffer, overwritten by the next replay, while the recurrence keeps earlier features
alive. A GPU is needed for real graphs (``test_torch_backend.py``, marked ``gpu``); here a
stand-in with the same memory behaviour runs on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import HiRN


class ReplayStandIn:
    """Behaves like a module replayed from a CUDA graph: inputs are copied into static
    buffers, and every call returns the same output tensor, overwritten in place."""

    def __init__(self, module):
        self.module = module
        self.buffers: dict = {}  # input shapes -> (static inputs, static output)

    def __call__(self, *inputs):
        key = tuple(tuple(x.shape) for x in inputs)
        if key not in self.buffers:  # "capture": allocate the static buffers once
            static = [torch.empty_like(x) for x in inputs]
            for buffer, x in zip(static, inputs):
                buffer.copy_(x)
            self.buffers[key] = static, self.module(*static).clone()
        static, output = self.buffers[key]
        for buffer, x in zip(static, inputs):
            buffer.copy_(x)
        output.copy_(self.module(*static))
        return output


def replaying(runner: TorchRunner, keeps_copies: bool) -> TorchRunner:
    """``runner`` with its step modules behind replay stand-ins, set up as ``cuda_graphs``
    would (which the constructor allows only on a GPU)."""
    runner.modules = {name: ReplayStandIn(module) for name, module in runner.modules.items()}
    runner.cuda_graphs = keeps_copies
    return runner


def test_replayed_steps_give_the_eager_output(one_thread):
    """With ``cuda_graphs`` the runner copies each replay's output, so a whole clip through
    buffer-reusing steps equals the eager run exactly."""
    torch.manual_seed(3)
    model = HiRN(mid_channels=8, num_blocks=1).eval()
    clip = torch.rand(3, 3, 64, 64).numpy()
    expected = upscale_clip(TorchRunner(model), clip)
    replayed = upscale_clip(replaying(TorchRunner(model), keeps_copies=True), clip)
    np.testing.assert_array_equal(replayed, expected)
    # the stand-in does reuse its memory: without the copies the output is wrong
    shared = upscale_clip(replaying(TorchRunner(model), keeps_copies=False), clip)
    assert np.abs(shared - expected).max() > 1e-3
