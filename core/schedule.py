"""HiRN's recurrence as a plan of steps over frame indices.

This is the single source of every frame and flow index of the three
propagation branches. The PyTorch model walks it with its step modules and
the runtime walks it with exported graphs ("one schedule, two executors").
Plain Python on purpose: importing it needs neither torch nor a backend.

Vocabulary:
- ``fb[i] = spynet(x[i], x[i+1])`` and ``ff[i] = spynet(x[i+1], x[i])`` are
  the backward and forward flows, ``i = 0 .. T-2``.
- A :data:`FlowChain` is a tuple of flows folded left to right with
  ``compose(a, b) = a + warp(b, a)``; the empty chain is the zero flow.
- A :class:`FeatureRef` names a feature map: ``spatial`` (the encoder's
  output) or a branch's output for one frame. ``None`` stands for zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

BRANCHES = ("backward", "forward", "group")
SPATIAL = "spatial"
FLOW_KINDS = ("backward", "forward")

# Hierarchical group-of-pictures tables of the group branch: (f, l0, l1) columns.
_GOP16 = (
    (0, 16, 8, 4, 2, 1, 3, 6, 5, 7, 12, 10, 9, 11, 14, 13, 15),
    (0, 0, 0, 0, 0, 0, 2, 4, 4, 6, 8, 8, 8, 10, 12, 12, 14),
    (0, 16, 16, 8, 4, 2, 4, 8, 6, 8, 16, 12, 10, 12, 16, 14, 16),
)
_GOP7 = (
    (0, 6, 3, 1, 2, 4, 5),
    (0, 0, 0, 0, 1, 3, 4),
    (0, 6, 6, 3, 3, 6, 6),
)


@dataclass(frozen=True, order=True)
class FlowRef:
    """One SpyNet flow: ``kind`` is ``backward`` (fb) or ``forward`` (ff)."""

    kind: str
    index: int

    def frames(self) -> tuple[int, int]:
        """(reference frame, supporting frame) that SpyNet is run on."""
        if self.kind == "backward":
            return self.index, self.index + 1
        return self.index + 1, self.index


FlowChain = tuple[FlowRef, ...]


@dataclass(frozen=True, order=True)
class FeatureRef:
    """A feature map: ``spatial`` or a branch's output, for one frame."""

    source: str
    frame: int


@dataclass(frozen=True)
class Step:
    """One recurrent step of a branch, computing that branch's ``frame``.

    The step module receives, in this order: ``current`` (the frame's spatial
    feature), ``context`` (outputs of earlier branches for this frame; the
    last one, or ``current`` when there is none, is the attention's centre),
    then, when ``aligned``, the two earlier outputs ``feat_a`` / ``feat_b``
    and the two chained flows ``flow_a`` / ``flow_b`` that align them.
    """

    branch: str
    frame: int
    current: FeatureRef
    context: tuple[FeatureRef, ...]
    aligned: bool
    feat_a: FeatureRef | None = None
    feat_b: FeatureRef | None = None
    flow_a: FlowChain = ()
    flow_b: FlowChain = ()

    @property
    def output(self) -> FeatureRef:
        return FeatureRef(self.branch, self.frame)

    def reads(self) -> tuple[FeatureRef, ...]:
        """Every feature map this step reads (zeros excluded)."""
        feats = (self.current, *self.context, self.feat_a, self.feat_b)
        return tuple(f for f in feats if f is not None)

    def flows(self) -> tuple[FlowRef, ...]:
        return self.flow_a + self.flow_b


@dataclass(frozen=True)
class Plan:
    """The whole recurrence for a clip of ``num_frames`` frames."""

    num_frames: int
    steps: tuple[Step, ...]

    def flows(self) -> tuple[FlowRef, ...]:
        """Every flow some step reads, sorted (backward flows first)."""
        return tuple(sorted({f for s in self.steps for f in s.flows()}))

    def decode_inputs(self, frame: int) -> tuple[FeatureRef | None, ...]:
        """Features the reconstruction of ``frame`` reads, in channel order.

        A branch output that no step computes (the GOP-7 quirk) is ``None``,
        i.e. zeros.
        """
        computed = self.computed()
        refs = [FeatureRef(SPATIAL, frame)]
        for branch in BRANCHES:
            ref = FeatureRef(branch, frame)
            refs.append(ref if ref in computed else None)
        return tuple(refs)

    def computed(self) -> frozenset[FeatureRef]:
        return frozenset(s.output for s in self.steps)


def _context(branch: str, frame: int) -> tuple[FeatureRef, ...]:
    earlier = BRANCHES[: BRANCHES.index(branch)]
    return tuple(FeatureRef(b, frame) for b in earlier)


def _chain(kind: str, indices) -> FlowChain:
    return tuple(FlowRef(kind, i) for i in indices)


def _linear_branch(branch: str, num_frames: int) -> list[Step]:
    """Backward (frames T-1 .. 0) or forward (0 .. T-1) propagation."""
    backward = branch == "backward"
    order = range(num_frames - 1, -1, -1) if backward else range(num_frames)
    # Neighbour one and two steps back along the propagation direction.
    d = 1 if backward else -1
    flow_kind = "backward" if backward else "forward"
    # fb[i] aligns frame i+1 onto i; ff[i-1] aligns frame i-1 onto i.
    flow_index = (lambda i: i) if backward else (lambda i: i - 1)

    steps = []
    for s, i in enumerate(order):
        common = dict(branch=branch, frame=i, current=FeatureRef(SPATIAL, i),
                      context=_context(branch, i))
        if s == 0:
            steps.append(Step(aligned=False, **common))
            continue
        f1 = _chain(flow_kind, [flow_index(i)])
        feat_b, f2 = None, ()
        if s > 1:
            feat_b = FeatureRef(branch, i + 2 * d)
            f2 = f1 + _chain(flow_kind, [flow_index(i + d)])
        steps.append(Step(aligned=True, feat_a=FeatureRef(branch, i + d), feat_b=feat_b,
                          flow_a=f1, flow_b=f2, **common))
    return steps


def _group_branch(num_frames: int) -> list[Step]:
    """Hierarchical propagation in groups of pictures, quirks included."""
    t = num_frames
    gop, (fs, l0s, l1s) = (16, _GOP16) if t >= 16 else (7, _GOP7)
    computed: set[int] = set()
    steps = []
    for g in range(math.ceil(t / gop)):
        base = g * gop
        for f, l0, l1 in zip(fs, l0s, l1s):
            frame = base + f
            if frame >= t or (g > 0 and f == 0):
                continue
            if base + l0 >= t:
                l0 = f
            if base + l1 >= t:
                l1 = t - 1 - base
            ref0, ref1 = base + l0, base + l1
            common = dict(branch="group", frame=frame, current=FeatureRef(SPATIAL, frame),
                          context=_context("group", frame))
            if frame == 0:
                steps.append(Step(aligned=False, **common))
            else:
                # Outputs are read "as they are now": not computed yet means zeros.
                feat_a = FeatureRef("group", ref0) if ref0 in computed else None
                feat_b = FeatureRef("group", ref1) if ref1 in computed else None
                flow_a = _chain("forward", [frame - 1, *range(frame - 2, ref0 - 1, -1)])
                # The chain towards ref1 reads fb[frame] twice (k - 1, not k):
                # the published checkpoints were trained with it.
                flow_b = () if frame == ref1 else _chain(
                    "backward", [frame, *range(frame, ref1 - 1)])
                steps.append(Step(aligned=True, feat_a=feat_a, feat_b=feat_b,
                                  flow_a=flow_a, flow_b=flow_b, **common))
            computed.add(frame)
    return steps


@lru_cache(maxsize=64)
def make_plan(num_frames: int) -> Plan:
    """The plan of all three branches, in execution order."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least 1 frame, got {num_frames}")
    steps = (_linear_branch("backward", num_frames) + _linear_branch("forward", num_frames)
             + _group_branch(num_frames))
    return Plan(num_frames, tuple(steps))


def mirrored(flow: FlowRef, num_frames: int) -> FlowRef:
    """The flow equal to ``flow`` when the clip equals its time reversal.

    For such a clip (even length, ``x[i] == x[T-1-i]``) the forward flows are
    the backward flows reversed in time, ``ff[i] = fb[T-2-i]``, which saves a
    second SpyNet pass.
    """
    if flow.kind == "backward":
        return flow
    return FlowRef("backward", num_frames - 2 - flow.index)
