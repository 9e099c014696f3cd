"""When each feature map, flow and flow chain of a plan is last read, and an order that keeps
the fewest of them alive.

Derived from :func:`~hirn.core.schedule.make_plan` alone. The order is pulled by the decode:
the first decode needs the first frame's backward feature, so the whole backward branch runs
first (it starts at the last frame); from then on the forward and group steps run just
before the first task that reads them, a group of pictures at a time, each frame decoded as
soon as its four maps exist. After each task, every value that no later task reads is
released. Steps whose output nothing decoded depends on (context frames at a window's end)
are not run at all. The arithmetic of every step is unchanged: each step reads the same
inputs as in plan order, so the outputs are the same to the bit.

With ``recompute_backward`` the backward maps are not all kept from the first phase to
their decode: only two consecutive ones every ``recompute_backward`` frames are (a backward
step reads the two maps after it), and the others are computed again from them just before
the group of pictures that reads them. The whole window's backward maps are what its peak
holds otherwise (256 bytes per LR pixel per frame in FP32); recomputing costs about one more
pass of the backward branch.

With ``encode_batch`` the spatial features are not kept between the backward branch and the
rest: each batch of frames is encoded once for the backward branch and once again for the
other branches (``encode`` costs about a tenth of a frame's work, a held map 256 bytes per
LR pixel in FP32). Batches are always the same frames (``[k*b, (k+1)*b)``), so a recomputed
map is the same to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .schedule import BRANCHES, SPATIAL, FeatureRef, FlowChain, FlowRef, Plan, Step, make_plan


@dataclass(frozen=True)
class Encode:
    """Encode the LR ``frames`` (one batch) into their spatial features."""

    frames: tuple[int, ...]

    @property
    def outputs(self) -> tuple[FeatureRef, ...]:
        return tuple(FeatureRef(SPATIAL, f) for f in self.frames)


@dataclass(frozen=True)
class Decode:
    """Reconstruct the HR ``frames`` (one batch) from their four feature maps."""

    frames: tuple[int, ...]


Task = Encode | Step | Decode
Value = FeatureRef | FlowRef | FlowChain  # a chain is the composed flow of its links


@dataclass(frozen=True)
class Schedule:
    """An execution order of a plan and, after each task, the values no later task reads.

    Attributes:
        tasks: encodes (only with ``encode_batch``), steps and decodes, in order.
        release: ``release[k]``: values to drop after ``tasks[k]``.
    """

    plan: Plan
    tasks: tuple[Task, ...]
    release: tuple[tuple[Value, ...], ...]

    def flows(self) -> frozenset[FlowRef]:
        """The flows some task reads (steps that are not run read none)."""
        return frozenset(v for r in self.release for v in r if isinstance(v, FlowRef))


def task_reads(plan: Plan, task: Task,
               decode_inputs: dict[int, tuple[FeatureRef | None, ...]] | None = None
               ) -> tuple[Value, ...]:
    """Every value ``task`` reads. Reading a chain counts as reading its prefixes and its
    flows too: the walker composes a chain from its prefix, so they live at least as long.
    ``decode_inputs``: :func:`decode_table` of the plan, when at hand (faster)."""
    if isinstance(task, Encode):
        return ()
    if isinstance(task, Decode):
        table = decode_inputs or decode_table(plan)
        return tuple(r for f in task.frames for r in table[f] if r is not None)
    values: list[Value] = list(task.reads())
    for links in (task.flow_a, task.flow_b):
        values += links
        values += [links[:n] for n in range(2, len(links) + 1)]
    return tuple(dict.fromkeys(values))


def decode_table(plan: Plan) -> dict[int, tuple[FeatureRef | None, ...]]:
    """``plan.decode_inputs`` of every frame, computed once."""
    computed = plan.computed()
    return {f: tuple(r if r is None or r.source == SPATIAL or r in computed else None
                     for r in (FeatureRef(SPATIAL, f),
                               *(FeatureRef(b, f) for b in BRANCHES)))
            for f in range(plan.num_frames)}


def task_outputs(task: Task) -> tuple[FeatureRef, ...]:
    if isinstance(task, Encode):
        return task.outputs
    if isinstance(task, Step):
        return (task.output,)
    return ()


def _pull_order(plan: Plan, decode_batches: list[tuple[int, ...]],
                table: dict[int, tuple[FeatureRef | None, ...]],
                done: set[FeatureRef] | None = None) -> list[Step | Decode]:
    """Steps and decodes, each step just before the first task that needs it (no recursion:
    a branch's chain of dependencies is as long as the clip). ``done``: maps already made
    and kept (their steps do not run again)."""
    producer = {s.output: s for s in plan.steps}
    done = set() if done is None else set(done)
    order: list[Step | Decode] = []
    for batch in decode_batches:
        wanted = [r for f in batch for r in table[f] if r is not None]
        stack = list(reversed(wanted))
        while stack:
            ref = stack[-1]
            if ref.source == SPATIAL or ref in done:
                stack.pop()
                continue
            step = producer[ref]
            missing = [r for r in step.reads() if r.source != SPATIAL and r not in done]
            if missing:
                stack += reversed(missing)
                continue
            stack.pop()
            order.append(step)
            done.add(ref)
        order.append(Decode(batch))
    return order


def _phase(task: Step | Decode) -> int:
    """0 for the backward branch (run first, over the whole clip), 1 for the rest."""
    return 0 if isinstance(task, Step) and task.branch == "backward" else 1


def _recomputing(plan: Plan, order: list[Step | Decode], decode_batches: list[tuple[int, ...]],
                 table: dict[int, tuple[FeatureRef | None, ...]], every: int
                 ) -> tuple[list[Step | Decode], list[int]]:
    """The backward steps of ``order``, then the rest pulled again with only the backward
    maps of frames ``k * every`` and ``k * every + 1`` kept: the others are made again by
    their steps when first read, from the nearest kept pair after them. The tasks and the
    phase of each."""
    first = sorted((t for t in order if _phase(t) == 0), key=lambda s: -s.frame)
    kept = {s.output for s in first if s.frame % every in (0, 1)}
    rest = _pull_order(plan, decode_batches, table, kept)
    return first + rest, [0] * len(first) + [1] * len(rest)


def _with_encodes(order: list[Step | Decode], phases: list[int], batch: int, num_frames: int,
                  reads: list[tuple[Value, ...]]) -> tuple[list[Task], list[tuple[Value, ...]]]:
    """Insert an encode of a frame's batch before its first reader in each phase; the tasks
    and what each reads."""
    tasks: list[Task] = []
    task_reads_: list[tuple[Value, ...]] = []
    encoded: set[int] = set()  # batches encoded in the current phase
    phase = 0
    for task, task_phase, values in zip(order, phases, reads):
        if task_phase != phase:
            phase, encoded = task_phase, set()
        for value in values:
            if isinstance(value, FeatureRef) and value.source == SPATIAL:
                k = value.frame // batch
                if k not in encoded:
                    encoded.add(k)
                    stop = min((k + 1) * batch, num_frames)
                    tasks.append(Encode(tuple(range(k * batch, stop))))
                    task_reads_.append(())
        tasks.append(task)
        task_reads_.append(values)
    return tasks, task_reads_


def _releases(tasks: list[Task], reads: list[tuple[Value, ...]]) -> list[tuple[Value, ...]]:
    """After each task, the values read or made there that no later task reads before they
    are made again (an encoded map is made again in the next phase)."""
    ends: list[list[Value]] = [[] for _ in tasks]
    last: dict[Value, int] = {}  # where the current life of a value was last read (or made)
    for k, (task, values) in enumerate(zip(tasks, reads)):
        for value in task_outputs(task):
            if value in last:  # made again: its previous life ended at its last read
                ends[last[value]].append(value)
            last[value] = k
        for value in values:
            last[value] = k
    for value, k in last.items():
        ends[k].append(value)
    return [tuple(e) for e in ends]


@lru_cache(maxsize=256)
def make_schedule(num_frames: int, decode: tuple[int, ...] | None = None,
                  batch_size: int = 1, encode_batch: int | None = None,
                  recompute_backward: int | None = None) -> Schedule:
    """The execution order of ``make_plan(num_frames)`` and its releases.

    Args:
        decode: the frames to decode, in order (None: all).
        batch_size: frames per decode task.
        encode_batch: frames per encode task, recomputing the spatial maps after the
            backward branch (None: no encode tasks; the caller provides every spatial map
            before the walk).
        recompute_backward: keep the backward maps of two frames in this many, and compute
            the others again when the rest of the clip reads them (None: keep all; the
            output is the same either way).
    """
    if recompute_backward is not None and recompute_backward < 2:
        raise ValueError(f"recompute_backward must be at least 2, got {recompute_backward}")
    plan = make_plan(num_frames)
    frames = list(range(num_frames)) if decode is None else list(decode)
    batches = [tuple(frames[i:i + batch_size]) for i in range(0, len(frames), batch_size)]
    table = decode_table(plan)
    order = _pull_order(plan, batches, table)
    phases = [_phase(task) for task in order]
    if recompute_backward:
        order, phases = _recomputing(plan, order, batches, table, recompute_backward)
    reads = [task_reads(plan, task, table) for task in order]
    tasks: list[Task] = list(order)
    if encode_batch:
        tasks, reads = _with_encodes(order, phases, encode_batch, num_frames, reads)
    return Schedule(plan, tuple(tasks), tuple(_releases(tasks, reads)))
