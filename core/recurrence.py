"""Walks a plan: the one loop over the recurrence that every executor uses.

Plain Python, generic over the array type: the PyTorch model passes its step
modules and tensors, the runtime passes a backend's graphs and arrays.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import TypeVar

from .schedule import FeatureRef, FlowChain, FlowRef, Plan, Step

A = TypeVar("A")


def walk(plan: Plan, features: MutableMapping[FeatureRef, A], flows: dict[FlowRef, A],
         run_step: Callable[[Step, list[A]], A], compose: Callable[[A, A], A],
         zero_feature: A, zero_flow: A) -> MutableMapping[FeatureRef, A]:
    """Compute every step of ``plan`` in order, storing outputs in ``features``.

    Args:
        features: must hold the ``spatial`` feature of every frame.
        flows: every flow the plan reads.
        run_step: ``(step, inputs) -> output`` with inputs in the order of
            :class:`~hirn.core.schedule.Step` (current, context, then, when
            aligned, feat_a, feat_b, flow_a, flow_b).
        compose: ``(a, b) -> a + warp(b, a)``.
        zero_feature, zero_flow: what a missing feature or empty chain reads.
    """
    chains: dict[FlowChain, A] = {}

    def chain(links: FlowChain) -> A:
        if not links:
            return zero_flow
        if links not in chains:
            # Chains share prefixes (f1 is the head of f2): compose each link once.
            chains[links] = (flows[links[0]] if len(links) == 1
                             else compose(chain(links[:-1]), flows[links[-1]]))
        return chains[links]

    def feature(ref: FeatureRef | None) -> A:
        return zero_feature if ref is None else features[ref]

    for step in plan.steps:
        inputs = [features[step.current], *(features[r] for r in step.context)]
        if step.aligned:
            inputs += [feature(step.feat_a), feature(step.feat_b), chain(step.flow_a),
                       chain(step.flow_b)]
        features[step.output] = run_step(step, inputs)
    return features
