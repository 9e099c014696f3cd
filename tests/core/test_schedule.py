"""The recurrence plan: complete, causal, and faithful to the original's quirks."""

import subprocess
import sys

import pytest

from hirn.core.recurrence import walk
from hirn.core.schedule import BRANCHES, SPATIAL, FeatureRef, FlowRef, make_plan, mirrored


def test_importing_the_schedule_needs_no_torch():
    code = "import sys, hirn.core.schedule; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("t", [1, 2, 3, 6, 7, 8, 14, 15, 16, 17, 31, 33, 50])
def test_steps_read_only_what_is_already_computed(t):
    plan = make_plan(t)
    done = {FeatureRef(SPATIAL, i) for i in range(t)}
    for step in plan.steps:
        assert all(ref in done for ref in step.reads()), step
        assert step.output not in done, f"{step.output} computed twice"
        assert all(0 <= f.index <= t - 2 for f in step.flows())
        assert step.aligned == (step.feat_a is not None or bool(step.flow_a))
        done.add(step.output)
    for branch in ("backward", "forward"):
        assert {s.frame for s in plan.steps if s.branch == branch} == set(range(t))


def test_branch_order_and_directions():
    plan = make_plan(5)
    assert [s.branch for s in plan.steps][:10] == ["backward"] * 5 + ["forward"] * 5
    assert [s.frame for s in plan.steps if s.branch == "backward"] == [4, 3, 2, 1, 0]
    step = next(s for s in plan.steps if s.branch == "forward" and s.frame == 3)
    assert step.feat_a == FeatureRef("forward", 2) and step.feat_b == FeatureRef("forward", 1)
    assert step.flow_a == (FlowRef("forward", 2),)
    assert step.flow_b == (FlowRef("forward", 2), FlowRef("forward", 1))
    assert step.context == (FeatureRef("backward", 3),)


@pytest.mark.parametrize("t, missing", [(6, []), (8, [7]), (15, [7, 14]), (16, []), (17, [])])
def test_gop7_leaves_frames_7_and_14_uncomputed(t, missing):
    plan = make_plan(t)
    group = {s.frame for s in plan.steps if s.branch == "group"}
    assert sorted(set(range(t)) - group) == missing
    for frame in missing:
        assert plan.decode_inputs(frame)[3] is None
        readers = [s for s in plan.steps if FeatureRef("group", frame) in (s.feat_a, s.feat_b)]
        assert not readers  # later columns read zeros in its place


def test_group_chain_repeats_flow_k_minus_1():
    """The chain towards l1 reads fb[F] twice, as the checkpoints were trained."""
    plan = make_plan(17)
    step = next(s for s in plan.steps if s.branch == "group" and s.frame == 1)  # l1 = 2
    assert step.feat_a == FeatureRef("group", 0) and step.feat_b == FeatureRef("group", 2)
    assert step.flow_a == (FlowRef("forward", 0),)
    assert step.flow_b == (FlowRef("backward", 1),)
    step = next(s for s in plan.steps if s.branch == "group" and s.frame == 2)  # l1 = 4
    assert step.flow_b == (FlowRef("backward", 2), FlowRef("backward", 2))
    step = next(s for s in plan.steps if s.branch == "group" and s.frame == 8)
    assert step.flow_b == tuple(FlowRef("backward", i) for i in (8, 8, 9, 10, 11, 12, 13, 14))
    assert step.flow_a == tuple(FlowRef("forward", i) for i in range(7, -1, -1))


def test_gop16_second_group_skips_its_first_column():
    plan = make_plan(33)
    group_frames = [s.frame for s in plan.steps if s.branch == "group"]
    assert group_frames[:3] == [0, 16, 8]
    assert group_frames.count(16) == 1 and group_frames.count(32) == 1
    assert sorted(group_frames) == list(range(33))
    # Clipped l1: frame 32 (second group's f=16) reads frame 32 itself -> zero flow.
    last = next(s for s in plan.steps if s.branch == "group" and s.frame == 32)
    assert last.flow_b == () and last.feat_b is None


def test_first_frame_of_each_branch_is_unaligned():
    plan = make_plan(4)
    first = [s for s in plan.steps if not s.aligned]
    assert [(s.branch, s.frame) for s in first] == [("backward", 3), ("forward", 0), ("group", 0)]
    assert all(s.aligned for s in make_plan(1).steps) is False


def test_every_flow_is_listed_and_mirror_mapping():
    plan = make_plan(6)
    assert len(plan.flows()) == 10
    assert mirrored(FlowRef("forward", 0), 6) == FlowRef("backward", 4)
    assert mirrored(FlowRef("backward", 3), 6) == FlowRef("backward", 3)
    assert FlowRef("forward", 1).frames() == (2, 1)


def test_context_follows_branch_order():
    for step in make_plan(3).steps:
        k = BRANCHES.index(step.branch)
        assert step.context == tuple(FeatureRef(b, step.frame) for b in BRANCHES[:k])


def test_rejects_empty_clip():
    with pytest.raises(ValueError, match="at least 1 frame"):
        make_plan(0)


# (frame F, L1) of every aligned group step, in execution order, worked out by hand from the
# design's rule (hirn-model.md): "if g*GOP + l1 >= T then l1 = T - 1 - g*GOP"
CLIPPED_L1 = {
    6: [(3, 5), (1, 3), (2, 3), (4, 5), (5, 5)],  # GOP 7: l1 = 6 clipped to 5
    10: [(6, 6), (3, 6), (1, 3), (2, 3), (4, 6), (5, 6),
         (8, 9), (9, 9)],  # second group (base 7): l1 = 3 clipped to 2
    16: [(8, 15), (4, 8), (2, 4), (1, 2), (3, 4), (6, 8), (5, 6), (7, 8),
         (12, 15), (10, 12), (9, 10), (11, 12), (14, 15), (13, 14), (15, 15)],  # 16 -> 15
    20: [(16, 16), (8, 16), (4, 8), (2, 4), (1, 2), (3, 4), (6, 8), (5, 6), (7, 8),
         (12, 16), (10, 12), (9, 10), (11, 12), (14, 16), (13, 14), (15, 16),
         (18, 19), (17, 18), (19, 19)],  # second group (base 16): l1 = 4 clipped to 3
}


@pytest.mark.parametrize("t", sorted(CLIPPED_L1))
def test_group_l1_is_clipped_to_the_last_frame(t):
    """Near the end of a clip the group branch aligns towards the last frame, T - 1, in
    place of a frame past the end: the chain towards L1 is fb[F], fb[F], .., fb[L1 - 2]
    (empty when F == L1), and feat_b is group[L1] if that was computed already."""
    plan = make_plan(t)
    done = set()
    got = []
    for step in plan.steps:
        if step.branch == "group" and step.aligned:
            l1 = step.frame + len(step.flow_b)
            got.append((step.frame, l1))
            expected_chain = () if l1 == step.frame else tuple(
                FlowRef("backward", i) for i in (step.frame, *range(step.frame, l1 - 1)))
            assert step.flow_b == expected_chain, step
            assert step.feat_b == (FeatureRef("group", l1) if l1 in done else None), step
        if step.branch == "group":
            done.add(step.frame)
    assert got == CLIPPED_L1[t]


# --- the plan against the model description, transcribed independently ----------------------
# Values are symbols: integers naming how they were computed (interned, so that a clip's
# deep recurrence stays cheap to compare), equal exactly when two computations read the same
# inputs in the same order.

_SYMBOLS: dict[tuple, int] = {}


def _symbol(*key) -> int:
    return _SYMBOLS.setdefault(key, len(_SYMBOLS))


ZERO, ZERO_FLOW = _symbol("zeros"), _symbol("zero flow")


def _compose(a, b):
    return _symbol("compose", a, b)  # a + warp(b, a)


def _described(t: int) -> dict[int, tuple[int, ...]]:
    """Each frame's decode inputs, computed as shared/design/hirn-model.md describes the
    propagation, loop by loop."""
    spatial = {i: _symbol("spatial", i) for i in range(t)}
    fb = {i: _symbol("flow", "backward", i) for i in range(t - 1)}
    ff = {i: _symbol("flow", "forward", i) for i in range(t - 1)}

    def linear(branch, frames, flow, d, context):
        out = {}
        for s, i in enumerate(frames):
            inputs = [spatial[i], *(c[i] for c in context)]
            if s > 0:
                f1, n2, f2 = flow[i if d == 1 else i - 1], ZERO, ZERO_FLOW
                if s > 1:
                    n2 = out[i + 2 * d]
                    f2 = _compose(f1, flow[i + 1 if d == 1 else i - 2])
                inputs += [out[i + d], n2, f1, f2]
            out[i] = _symbol("step", branch, s > 0, *inputs)
        return out

    backward = linear("backward", range(t - 1, -1, -1), fb, 1, [])
    forward = linear("forward", range(t), ff, -1, [backward])
    gop, (fs, l0s, l1s) = (16, GOP16_COLUMNS) if t >= 16 else (7, GOP7_COLUMNS)
    group: dict[int, int] = {}
    for g in range(-(-t // gop)):
        for f, l0, l1 in zip(fs, l0s, l1s):
            frame = g * gop + f
            if frame >= t or (g > 0 and f == 0):
                continue
            l0 = f if g * gop + l0 >= t else l0
            l1 = t - 1 - g * gop if g * gop + l1 >= t else l1
            big_l0, big_l1 = g * gop + l0, g * gop + l1
            inputs = [spatial[frame], backward[frame], forward[frame]]
            if frame > 0:
                g0 = ff[frame - 1]
                for k in range(frame - 1, big_l0, -1):
                    g0 = _compose(g0, ff[k - 1])
                g1 = ZERO_FLOW
                if frame != big_l1:
                    g1 = fb[frame]
                    for k in range(frame + 1, big_l1):
                        g1 = _compose(g1, fb[k - 1])
                inputs += [group.get(big_l0, ZERO), group.get(big_l1, ZERO), g0, g1]
            group[frame] = _symbol("step", "group", frame > 0, *inputs)
    return {i: (spatial[i], backward[i], forward[i], group.get(i, ZERO)) for i in range(t)}


# the tables of the description (its f, l0, l1 rows), not the module's
GOP16_COLUMNS = ([0, 16, 8, 4, 2, 1, 3, 6, 5, 7, 12, 10, 9, 11, 14, 13, 15],
                 [0, 0, 0, 0, 0, 0, 2, 4, 4, 6, 8, 8, 8, 10, 12, 12, 14],
                 [0, 16, 16, 8, 4, 2, 4, 8, 6, 8, 16, 12, 10, 12, 16, 14, 16])
GOP7_COLUMNS = ([0, 6, 3, 1, 2, 4, 5], [0, 0, 0, 0, 1, 3, 4], [0, 6, 6, 3, 3, 6, 6])


@pytest.mark.parametrize("t", range(1, 41))
def test_the_plan_computes_what_the_model_description_computes(t):
    """Walking the plan (with symbols) gives every frame's decode inputs exactly as the
    description's loops do: the same steps, reading the same maps and composed flows, in
    the same order, zeros where it reads zeros."""
    plan = make_plan(t)
    features = {FeatureRef(SPATIAL, i): _symbol("spatial", i) for i in range(t)}
    flows = {f: _symbol("flow", f.kind, f.index) for f in plan.flows()}
    walk(plan, features, flows,
         run_step=lambda step, inputs: _symbol("step", step.branch, step.aligned, *inputs),
         compose=_compose, zero_feature=ZERO, zero_flow=ZERO_FLOW)
    walked = {i: tuple(ZERO if r is None else features[r] for r in plan.decode_inputs(i))
              for i in range(t)}
    assert walked == _described(t)


def test_flow_frames_and_mirroring_follow_the_description():
    """fb[i] = spynet(x[i], x[i+1]), ff[i] = spynet(x[i+1], x[i]); in a clip equal to its
    time reversal ff[i] = fb[T-2-i]."""
    for i in range(5):
        assert FlowRef("backward", i).frames() == (i, i + 1)
        assert FlowRef("forward", i).frames() == (i + 1, i)
    for t in (2, 6, 10):
        for i in range(t - 1):
            assert mirrored(FlowRef("forward", i), t) == FlowRef("backward", t - 2 - i)
            assert mirrored(FlowRef("backward", i), t) == FlowRef("backward", i)
