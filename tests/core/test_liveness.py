"""Liveness: the scheduled walk reads exactly what the plan-order walk reads, and nothing is
freed before its last reader."""

import subprocess
import sys
import weakref

import pytest

from hirn.core.liveness import Decode, Encode, make_schedule, task_reads
from hirn.core.recurrence import walk
from hirn.core.schedule import SPATIAL, FeatureRef, FlowRef, Step, make_plan

# every clip length, whole or with context frames, with and without re-encoding, keeping
# every backward map or recomputing them from two in 16 (the runtime's) or in 5
CASES = [(t, keep, batch, encode, recompute)
         for t in range(1, 41)
         for keep, batch, encode, recompute in (
             ((0, t), 1, None, None), ((0, t), 3, 3, None),
             ((min(4, t - 1), max(t - 4, min(4, t - 1) + 1)), 4, 4, None),
             ((0, t), 4, 4, 16), ((min(4, t - 1), max(t - 4, min(4, t - 1) + 1)), 3, 3, 5),
             ((0, t), 1, None, 2))]


class Symbols:
    """A symbolic executor: every value is an integer naming the computation that made it,
    equal for two walks exactly when they computed it from the same inputs."""

    def __init__(self):
        self.ids: dict[tuple, int] = {}

    def __call__(self, *key) -> int:
        return self.ids.setdefault(key, len(self.ids))

    def spatial(self, frame: int) -> int:
        return self("spatial", frame)


class Tracked(dict):
    """A dict that records the most entries it held."""

    peak = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.peak = max(self.peak, len(self))


def _plain(plan, sym: Symbols) -> dict[int, list[int]]:
    """What each frame's decode reads, walking the plan in its own order, keeping all."""
    features = {FeatureRef(SPATIAL, i): sym.spatial(i) for i in range(plan.num_frames)}
    flows = {f: sym("flow", f) for f in plan.flows()}
    walk(plan, features, flows, run_step=lambda s, x: sym(s.output, *x),
         compose=lambda a, b: sym("compose", a, b), zero_feature=sym("zero"),
         zero_flow=sym("zero flow"))
    return {i: [sym("zero") if r is None else features[r] for r in plan.decode_inputs(i)]
            for i in range(plan.num_frames)}


def test_importing_liveness_needs_no_torch():
    code = "import sys, hirn.core.liveness, hirn.core.recurrence; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("t, keep, batch, encode, recompute", CASES)
def test_scheduled_walk_reads_what_the_plan_order_reads(t, keep, batch, encode, recompute):
    """Every decode sees the very same computations as in plan order (a value freed too
    early would raise KeyError), each kept frame is decoded once, and at the end nothing
    is left alive."""
    plan, sym = make_plan(t), Symbols()
    expected = _plain(plan, sym)
    frames = tuple(range(*keep))
    schedule = make_schedule(t, frames, batch, encode, recompute)
    features = Tracked() if encode else Tracked(
        {FeatureRef(SPATIAL, i): sym.spatial(i) for i in range(t)})
    flows = {f: sym("flow", f) for f in plan.flows()}
    decoded: dict[int, list[int]] = {}

    def decode(batch_frames, maps):
        assert len(batch_frames) <= batch
        for f, m in zip(batch_frames, maps):
            assert f not in decoded
            decoded[f] = m

    walk(plan, features, flows, run_step=lambda s, x: sym(s.output, *x),
         compose=lambda a, b: sym("compose", a, b), zero_feature=sym("zero"),
         zero_flow=sym("zero flow"), schedule=schedule,
         encode=lambda fs: [sym.spatial(f) for f in fs], decode=decode)
    assert decoded == {f: expected[f] for f in frames}
    assert list(decoded) == list(frames)  # in order
    assert not features and not (flows.keys() & schedule.flows())


@pytest.mark.parametrize("recompute", [None, 16])
@pytest.mark.parametrize("t", range(1, 41))
def test_no_value_is_released_before_its_last_reader(t, recompute):
    """Directly on the table: a value released after task k is read by no later task until
    it is made again (an encoded map, a recomputed backward map), and every read value is
    alive."""
    schedule = make_schedule(t, None, 4, 4, recompute)
    alive: set = set(schedule.flows())
    released_at: dict = {}
    for k, (task, released) in enumerate(zip(schedule.tasks, schedule.release)):
        for value in task_reads(schedule.plan, task):
            if isinstance(value, tuple) and len(value) > 1 and value not in alive:
                alive.add(value)  # a chain is composed at its first reader
            if isinstance(value, FlowRef) or isinstance(value, FeatureRef):
                assert value in alive, (value, task, released_at.get(value))
        alive |= set(getattr(task, "outputs", ())) | (
            {task.output} if isinstance(task, Step) else set())
        for value in released:
            assert value in alive or isinstance(value, tuple)
            alive.discard(value)
            released_at[value] = k
    assert not {v for v in alive if not isinstance(v, tuple)}


def _peak_maps(t: int, encode: int | None, recompute: int | None = None) -> int:
    """The most feature maps the scheduled walk of a ``t``-frame clip holds at once."""
    plan, sym = make_plan(t), Symbols()
    features = Tracked() if encode else Tracked(
        {FeatureRef(SPATIAL, i): sym.spatial(i) for i in range(t)})
    walk(plan, features, {f: sym("flow", f) for f in plan.flows()},
         run_step=lambda s, x: sym(s.output, *x), compose=lambda a, b: sym("compose", a, b),
         zero_feature=0, zero_flow=0, schedule=make_schedule(t, None, 4, encode, recompute),
         encode=lambda fs: [sym.spatial(f) for f in fs], decode=lambda fs, m: None)
    return features.peak


def test_memory_follows_the_plan():
    """The plan-order walk holds four maps per frame; the scheduled one grows by one map
    per frame (its backward feature, alive until its decode) once past a few groups, and
    re-encoding holds fewer spatial maps."""
    for t in (16, 32, 48):
        assert _peak_maps(t, 4) < _peak_maps(t, None) < 4 * t
    assert _peak_maps(64, 4) - _peak_maps(32, 4) <= 32
    assert _peak_maps(64, None) - _peak_maps(32, None) <= 2 * 32


def test_recomputing_the_backward_branch_holds_two_maps_in_16_frames():
    """Past a group, 16 more frames hold two more maps (a kept pair), not sixteen; the
    backward steps run once more for every frame outside the kept pairs."""
    for t in (48, 64):
        assert _peak_maps(t, 4, 16) < _peak_maps(t, 4) - (t - 40)
    assert _peak_maps(64, 4, 16) - _peak_maps(48, 4, 16) <= 2
    assert _peak_maps(80, 4, 16) - _peak_maps(64, 4, 16) <= 2
    steps = [x for x in make_schedule(64, None, 4, 4, 16).tasks if isinstance(x, Step)]
    backward = [s.frame for s in steps if s.branch == "backward"]
    assert sorted(backward) == sorted(list(range(64)) + [f for f in range(64) if f % 16 > 1])
    with pytest.raises(ValueError, match="at least 2"):
        make_schedule(8, None, 1, None, 1)


def test_groups_of_7_and_16_decode_group_by_group():
    """GOP 16 (17 frames) and GOP 7 (8 frames): the backward branch runs first and whole;
    each decode comes as soon as its group's steps are done, before the next group's."""
    for t, gop in ((17, 16), (8, 7)):
        tasks = make_schedule(t, None, 1, None).tasks
        steps = [x for x in tasks if isinstance(x, Step)]
        assert [s.branch for s in steps[:t]] == ["backward"] * t
        first_decode = next(k for k, x in enumerate(tasks) if isinstance(x, Decode))
        later = [x for x in tasks[first_decode:] if isinstance(x, Step)]
        # after the first decode, no step of a frame beyond the next group runs
        assert all(s.frame <= 2 * gop for s in later)
        decodes = [x.frames[0] for x in tasks if isinstance(x, Decode)]
        assert decodes == list(range(t))


def test_context_only_frames_run_no_dead_steps_and_encodes_repeat_the_same_batches():
    schedule = make_schedule(32, tuple(range(4, 28)), 4, 4)
    steps = [x for x in schedule.tasks if isinstance(x, Step)]
    assert len({s.output for s in steps}) == len(steps)
    # the forward features of the last context frames feed nothing that is decoded
    assert FeatureRef("forward", 31) not in {s.output for s in steps}
    assert len([s for s in steps if s.branch == "backward"]) == 32
    encodes = [x.frames for x in schedule.tasks if isinstance(x, Encode)]
    assert set(encodes) == {tuple(range(k, k + 4)) for k in range(0, 32, 4)}
    assert len(encodes) <= 2 * 8


@pytest.mark.parametrize("recompute", [None, 4])
@pytest.mark.parametrize("t", [5, 17, 33])
def test_each_flow_chain_is_composed_once(t, recompute):
    """A chain's prefixes live as long as the chains built on them: a prefix dropped too
    early would be composed again (the same values, more work)."""
    plan = make_plan(t)
    composed = []

    def compose(a, b):
        composed.append((a, b))
        return ("compose", a, b)

    schedule = make_schedule(t, None, 4, 4, recompute)
    walk(plan, Tracked(), {f: ("flow", f) for f in plan.flows()},
         run_step=lambda s, x: s.output, compose=compose, zero_feature=0, zero_flow=0,
         schedule=schedule, encode=lambda fs: list(fs), decode=lambda fs, m: None)
    steps = {task for task in schedule.tasks if isinstance(task, Step)}
    chains = {c[:n] for s in steps for c in (s.flow_a, s.flow_b) for n in range(2, len(c) + 1)}
    assert len(composed) == len(set(composed)) == len(chains)


def test_tasks_run_just_in_time_frame_by_frame():
    """5 frames (GOP 7), one frame a decode: the backward branch, then each frame's decode
    right after the steps it still lacks, each pulled depth first (group 1 reads group 3,
    which reads forward 3)."""
    def name(task):
        if isinstance(task, Decode):
            return f"D{task.frames[0]}"
        return f"{task.branch[0].upper()}{task.frame}"

    expected = ("B4 B3 B2 B1 B0 F0 G0 D0 F1 F2 F3 G3 G1 D1 G2 D2 D3 F4 G4 D4").split()
    assert [name(task) for task in make_schedule(5, None, 1, None).tasks] == expected


class _Flow:
    """A flow or composed chain that can be watched with a weak reference."""


@pytest.mark.parametrize("t", [5, 17, 33])
def test_no_flow_outlives_its_last_reader(t):
    """Flows and chains are held by the walk only until their last reader: once the last
    step has run (at the last decode), none is alive."""
    plan = make_plan(t)
    watched = []

    def made() -> _Flow:
        value = _Flow()
        watched.append(weakref.ref(value))
        return value

    alive_at_decodes = []
    walk(plan, Tracked(), {f: made() for f in plan.flows()},
         run_step=lambda s, x: s.output, compose=lambda a, b: made(), zero_feature=0,
         zero_flow=0, schedule=make_schedule(t, None, 4, 4),
         encode=lambda fs: list(fs),
         decode=lambda fs, m: alive_at_decodes.append(sum(r() is not None for r in watched)))
    assert alive_at_decodes[-1] == 0


def test_an_encode_that_returns_the_wrong_number_of_maps_is_an_error():
    """An encode of a batch must give one map per frame: zip(strict) says so at once rather
    than leaving a frame's map missing (a KeyError far from the cause) or mismatched."""
    plan = make_plan(8)
    with pytest.raises(ValueError, match="zip"):
        walk(plan, {}, {f: ("flow", f) for f in plan.flows()},
             run_step=lambda s, x: s.output, compose=lambda a, b: (a, b), zero_feature=0,
             zero_flow=0, schedule=make_schedule(8, None, 4, 4),
             encode=lambda fs: list(fs)[:-1], decode=lambda fs, m: None)
