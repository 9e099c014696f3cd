"""Exponential moving average of a model's weights (BasicSR's ``model_ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` after every optimiser step.

    Starts as a copy of the model; buffers are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, p in self.module.named_parameters():
            p.mul_(self.decay).add_(params[name].detach(), alpha=1 - self.decay)
        buffers = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            b.copy_(buffers[name])

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
