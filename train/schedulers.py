"""Cosine annealing with restarts, as BasicSR's ``CosineAnnealingRestartLR``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def cosine_restart_lr(iteration: int, base_lr: float, periods: Sequence[int],
                      restart_weights: Sequence[float], eta_min: float) -> float:
    """The learning rate at ``iteration`` (the scheduler's ``last_epoch``).

    Cycle ``k`` covers iterations ``(C[k-1], C[k]]`` of the cumulative periods
    ``C`` (the first also iteration 0); inside it the rate falls from
    ``eta_min + w_k (base_lr - eta_min)`` to ``eta_min`` along half a cosine.
    """
    end = 0
    for period, weight in zip(periods, restart_weights):
        start, end = end, end + period
        if iteration <= end:
            return eta_min + weight * 0.5 * (base_lr - eta_min) * (
                1 + math.cos(math.pi * (iteration - start) / period))
    raise ValueError(f"iteration {iteration} is past the last period (they end at {end})")


class CosineAnnealingRestartLR(LRScheduler):
    """Per-iteration cosine annealing with restarts (``step()`` once per iteration).

    Every parameter group anneals from its own initial lr to the shared ``eta_min``.

    Args:
        periods: iterations in each cycle.
        restart_weights: peak of each cycle, as a fraction of the initial lr.
        eta_min: the lr at the end of each cycle.
    """

    def __init__(self, optimizer: Optimizer, periods: Sequence[int],
                 restart_weights: Sequence[float] = (1,), eta_min: float = 0.0,
                 last_epoch: int = -1):
        if len(periods) != len(restart_weights):
            raise ValueError("periods and restart_weights must have the same length")
        self.periods, self.restart_weights = list(periods), list(restart_weights)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [cosine_restart_lr(self.last_epoch, base, self.periods, self.restart_weights,
                                  self.eta_min) for base in self.base_lrs]
