"""Walks a plan: the one loop over the recurrence that every executor uses.

Plain Python, generic over the array type: the PyTorch model passes its step
modules and tensors, the runtime passes a backend's graphs and arrays.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import TypeVar

from .liveness import Decode, Encode, Schedule, decode_table
from .schedule import FeatureRef, FlowChain, FlowRef, Plan, Step

A = TypeVar("A")


def walk(plan: Plan, features: MutableMapping[FeatureRef, A], flows: MutableMapping[FlowRef, A],
         run_step: Callable[[Step, list[A]], A], compose: Callable[[A, A], A],
         zero_feature: A, zero_flow: A, schedule: Schedule | None = None,
         encode: Callable[[tuple[int, ...]], Sequence[A]] | None = None,
         decode: Callable[[tuple[int, ...], list[list[A]]], None] | None = None,
         ) -> MutableMapping[FeatureRef, A]:
    """Compute the steps of ``plan``, storing outputs in ``features``.

    Without ``schedule``: every step in plan order, nothing released. With one
    (:func:`~hirn.core.liveness.make_schedule` of this plan): its tasks in its order, and
    after each task the values no later task reads are dropped from ``features``,
    ``flows`` and the composed chains, so that memory follows the plan.

    Args:
        features: the ``spatial`` feature of every frame, unless ``schedule`` has encode
            tasks.
        flows: every flow the plan reads.
        run_step: ``(step, inputs) -> output`` with inputs in the order of
            :class:`~hirn.core.schedule.Step` (current, context, then, when
            aligned, feat_a, feat_b, flow_a, flow_b).
        compose: ``(a, b) -> a + warp(b, a)``.
        zero_feature, zero_flow: what a missing feature or empty chain reads.
        encode: ``frames -> spatial maps`` for the schedule's encode tasks.
        decode: ``(frames, inputs)`` for the schedule's decode tasks; ``inputs[i]`` are
            frame ``frames[i]``'s maps in the order of ``plan.decode_inputs``.
    """
    chains: dict[FlowChain, A] = {}

    def chain(links: FlowChain) -> A:
        if not links:
            return zero_flow
        if len(links) == 1:  # the flow itself: not kept here, so it goes when released
            return flows[links[0]]
        if links not in chains:
            # Chains share prefixes (f1 is the head of f2): compose each link once.
            chains[links] = compose(chain(links[:-1]), flows[links[-1]])
        return chains[links]

    def feature(ref: FeatureRef | None) -> A:
        return zero_feature if ref is None else features[ref]

    def step_inputs(step: Step) -> list[A]:
        # built in a call of its own, so no local holds them once the step has run
        inputs = [features[step.current], *(features[r] for r in step.context)]
        if step.aligned:
            inputs += [feature(step.feat_a), feature(step.feat_b), chain(step.flow_a),
                       chain(step.flow_b)]
        return inputs

    tasks = plan.steps if schedule is None else schedule.tasks
    inputs_of = decode_table(plan) if decode is not None else {}
    for k, task in enumerate(tasks):
        if isinstance(task, Encode):
            for ref, value in zip(task.outputs, encode(task.frames), strict=True):
                features[ref] = value
        elif isinstance(task, Decode):
            decode(task.frames, [[feature(r) for r in inputs_of[f]] for f in task.frames])
        else:
            features[task.output] = run_step(task, step_inputs(task))
        if schedule is not None:
            for value in schedule.release[k]:
                store = (features if isinstance(value, FeatureRef)
                         else flows if isinstance(value, FlowRef) else chains)
                store.pop(value, None)
    return features
