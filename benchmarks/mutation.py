"""Mutation testing: do the tests notice when the plan, windows, padding, timing or metrics change?

mutmut (configured in pyproject.toml's ``[tool.mutmut]``) mutates one module at a time and runs,
for each mutant, the tests of ``[tool.hirn-mutation]`` that call the mutated function. mutmut
names a module by its file's path, and hirn's subpackages live at the repository root (mapped by
``package-dir``), so each module runs in ``build/mutation/NAME/``, a copy laid out as
``src/hirn/`` with ``tests/`` and ``configs/`` beside it. Run under ``nice``: it takes the CPU.

    python benchmarks/mutation.py [--modules padding,windows,...] [--source worktree|head]
                                  [--jobs 2] [--again]

``--source head`` copies the last commit instead of the working tree (for a tree that others
are editing), but for the module's test files and tests/support.py. ``--again`` retests only
the last run's survivors, after new tests were written. Writes
benchmarks/results/mutation.{json,md}, keeping the results of modules not run this time; a
survivor listed in :data:`EQUIVALENT` is reported with its reason. 5 to 30 minutes a module on
2 shared, loaded cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from common import REPO, RESULTS, SHARED

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

STAGE = REPO / "build" / "mutation"
PACKAGES = ("core", "runtime", "train", "export", "plugins")
SUPPORT = ("tests/support.py", "tests/conftest.py")  # copied with a module's tests
COPIED = ("tests", "configs")

# Reasons shared by several survivors of EQUIVALENT
_ARANGE_DTYPE = (
    "the output coordinates are only divided by the scale: integer or float64 arange give "
    "the same float64 values")
_CUBIC_KNOTS = (
    "both pieces of the kernel are exactly 0 at |x| = 1 and 2 (a = -0.5: every term is a "
    "multiple of 0.5, so the sums are exact): which piece owns a knot changes nothing")
_L0_NEVER_CLIPPED = (
    "l0 <= f in every column of both tables, so base + l0 <= frame < t: the clipping of "
    "l0 (kept because the description has it) never applies, whatever its condition")
_FIRST_PHASE_UNUSED = (
    "the first task always sets the phase and empties the encoded batches, which are "
    "empty then anyway: the initial phase is never used")
_ASTYPE_NONE = "astype(None) is astype(float64) in numpy"
_PHASES_COMPARED = "the phases are only compared for a change: 0 then 2 acts as 0 then 1"
# Why skipping the writer's explicit conversion to YUV changes nothing today
_ENCODER_CONVERTS = (
    "with PyAV 18 the encoder converts a frame that is not in its format itself, with the "
    "matrix and range the frame is tagged with (_tag, before encoding): skipping the explicit "
    "conversion gives the same samples (test_colour.py's round trips: 0.74, 0.69 and 0.77 "
    "levels, as unmutated); it is kept so as not to rest on that default")

# Survivors whose change no test can see, with the reason (mutmut's names, at the commit of the
# results).
EQUIVALENT: dict[str, str] = {
    "hirn.runtime.padding.x_pad_frames__mutmut_2":
        "frames are [T, C, H, W], the only shape pad_frames takes: shape[+2:] is shape[-2:]",
    "hirn.model.imresize.x__resize_axis__mutmut_23":
        "np.zeros makes float64 when no dtype is given: dtype=None is dtype=np.float64",
    "hirn.model.imresize.x__resize_axis__mutmut_25":
        "np.zeros makes float64 when no dtype is given: leaving the dtype out changes nothing",
    "hirn.model.imresize.x__resize_axis__mutmut_31":
        "imresize always runs two passes: subtracting every tap negates both, and -(-y) = y "
        "exactly (negation is exact in floating point)",
    "hirn.model.imresize.x__resize_axis__mutmut_36":
        "numpy takes any negative length in reshape as 'the rest' (-2 acts as -1)",
    "hirn.model.imresize.x_imresize__mutmut_23":
        "shape[:3] adds the channel count to the emptiness check: it differs only for an "
        "[H, W, 0] array (resized to [h, w, 0] or refused), which no caller makes",
    "hirn.model.imresize.x_imresize__mutmut_33":
        "output_size reads the first two entries only: shape[:3] gives the same size",
    "hirn.model.imresize.x_imresize__mutmut_35":
        _ASTYPE_NONE,
    "hirn.model.imresize.x_contributions__mutmut_4":
        "at scale 1 the antialiased kernel scale * cubic(scale * x) with width 4 / scale is "
        "the plain cubic kernel: <= 1 and < 1 give the same weights",
    "hirn.model.imresize.x_contributions__mutmut_15":
        _ARANGE_DTYPE,
    "hirn.model.imresize.x_contributions__mutmut_18":
        _ARANGE_DTYPE,
    "hirn.model.imresize.x_contributions__mutmut_39":
        "one more tap lies outside the kernel's support: its column of weights is all zero and "
        "is dropped (keep = any weight != 0)",
    "hirn.model.imresize.x_cubic__mutmut_19":
        _CUBIC_KNOTS,
    "hirn.model.imresize.x_cubic__mutmut_35":
        _CUBIC_KNOTS,
    "hirn.model.imresize.x_cubic__mutmut_37":
        _CUBIC_KNOTS,
    "hirn.model.imresize.x_contributions__mutmut_66":
        "the mirror table gets one more entry (-1) at index 2n, which the indices, taken "
        "modulo 2n, never reach",
    "hirn.train.metrics.x__pair__mutmut_29": _ASTYPE_NONE,
    "hirn.train.metrics.x__pair__mutmut_30": _ASTYPE_NONE,
    "hirn.train.metrics.x_rgb_to_y__mutmut_13": _ASTYPE_NONE,
    "hirn.train.metrics.x__ssim_channel__mutmut_28":
        "OpenCV takes any negative ddepth as 'the source's depth': -2 acts as -1",
    "hirn.core.schedule.x__group_branch__mutmut_13":
        "ceil(t * gop) groups instead of ceil(t / gop): every column of a group past the "
        "last starts at or beyond frame t and is skipped (frame >= t), so the steps are the "
        "same",
    "hirn.core.liveness.x_task_reads__mutmut_14":
        "also lists the empty chain and the one-link chain as read: no task makes or holds "
        "them (the walker returns the zero flow or the flow itself), so releasing them is a "
        "no-op and the bound does not count them",
    "hirn.core.liveness.x_task_reads__mutmut_18":
        "links[:len + 1] is links itself, already listed: dict.fromkeys drops the repeat",
    "hirn.train.evaluate.x_load_clip__mutmut_19":
        "names[:max_frames] with max_frames None is names[:None], all of them: the same as "
        "the else branch",
    "hirn.core.schedule.x__group_branch__mutmut_32":
        _L0_NEVER_CLIPPED,
    "hirn.core.schedule.x__group_branch__mutmut_33":
        _L0_NEVER_CLIPPED,
    "hirn.core.schedule.x__group_branch__mutmut_34":
        "l0 <= f in every column of both tables, so base + l0 <= frame < t: the clipped "
        "value is never assigned",
    "hirn.core.schedule.x__linear_branch__mutmut_87":
        "2 / d is 2.0 or -2.0 for d = 1 or -1, and a float frame equals and hashes as the "
        "int (FeatureRef(b, 5.0) == FeatureRef(b, 5))",
    "hirn.core.liveness.x__phase__mutmut_8":
        _PHASES_COMPARED,
    "hirn.core.recurrence.x_walk__mutmut_33":
        "the decode table is read only by decode tasks, which a schedule has only when the "
        "caller passes decode: building it anyway costs time, not results",
    "hirn.core.recurrence.x_walk__mutmut_65":
        "a released value is always held when released (a schedule releases only what a "
        "task read or made, and a missing input fails at its reader first): pop needs no "
        "default",
    "hirn.core.liveness.x__recomputing__mutmut_30":
        _PHASES_COMPARED,
    "hirn.core.liveness.x__with_encodes__mutmut_4":
        _FIRST_PHASE_UNUSED,
    "hirn.core.liveness.x__with_encodes__mutmut_5":
        _FIRST_PHASE_UNUSED,
    "hirn.media.video_writer.xǁVideoSinkǁ_write__mutmut_8":
        _ENCODER_CONVERTS,
    "hirn.media.video_writer.xǁVideoSinkǁ_write__mutmut_9":
        _ENCODER_CONVERTS,
    "hirn.media.video_writer.xǁVideoSinkǁ_write__mutmut_11":
        "format=None converts to the matrix and range but stays RGB; the encoder then makes "
        "YUV with the frame's tags, as above: the same samples",
    "hirn.media.video_writer.xǁVideoSinkǁ_write__mutmut_14":
        "without format the conversion keeps RGB (converted to the matrix and range); the "
        "encoder then makes YUV with the frame's tags, as for _write__mutmut_11",
    "hirn.media.video_writer.xǁVideoSinkǁ_finish__mutmut_4":
        "a packet without a dts gets one from the muxer, its pts for a lone frame: the "
        "one-frame H.265 test reads (pts, dts) == (0, 0) either way; it is the uninitialised "
        "dts of libx265 that must not reach the muxer",
    "hirn.media.video_writer.xǁVideoSinkǁ_finish__mutmut_10":
        "the container is closed just before: '' instead of None is only read by _release "
        "(on abort, which a finished sink never does), whose close_quietly would swallow the "
        "error of ''.close() anyway",
    "hirn.runtime.windows.x_iter_windows__mutmut_17":
        "first is set to keep_from before it is read, and held is empty when the first "
        "del runs: its initial value is never used",
    "hirn.runtime.windows.x_iter_windows__mutmut_63":
        "ended and total <= reach are one fact: the reading loop stops with total > reach "
        "unless the stream ends, and the end is only seen while total <= reach (a window "
        "after it is the last and returns): 'and' and 'or' of them agree",
    "hirn.runtime.windows.x_iter_windows__mutmut_20":
        "ended is only tested for truth: None and False act alike",
}


# Tests written to kill the survivors of a first run, per module (pytest node ids).
NEW_TESTS: dict[str, list[str]] = {
    "schedule": [
        "tests/core/test_schedule.py::test_the_plan_computes_what_the_model_description_computes",
        "tests/core/test_schedule.py::test_flow_frames_and_mirroring_follow_the_description"],
    "liveness": ["tests/core/test_liveness.py::test_each_flow_chain_is_composed_once",
                 "tests/core/test_liveness.py::test_tasks_run_just_in_time_frame_by_frame",
                 "tests/core/test_liveness.py::test_no_flow_outlives_its_last_reader"],
    "recurrence": ["tests/core/test_liveness.py::"
                   "test_an_encode_that_returns_the_wrong_number_of_maps_is_an_error"],
    "video-timing": [
        "tests/media/test_video.py::test_a_png_folder_notes_uneven_timing_once",
        "tests/media/test_video.py::test_a_wrong_frame_or_a_closed_sink_is_refused_clearly",
        "tests/media/test_video.py::test_frames_without_timestamps_are_numbered_at_the_frame_rate",
        "tests/media/test_video.py::test_16_bit_frames_are_written_as_ten_bit_video",
        # libx265's garbage dts comes in some processes and not others (the mutant of its fix
        # survived test_one_frame_h265_mp4_has_sane_timestamps): this test plants one
        "tests/media/test_video.py::test_a_lone_frames_dts_is_set_to_its_pts"],
    "padding": ["tests/runtime/test_padding.py::test_network_input_is_float32_channels_first",
                "tests/runtime/test_padding.py::test_a_frame_without_pixels_is_refused",
                "tests/runtime/test_padding.py::test_16_bit_output_conversion"],
    "windows": [
        "tests/runtime/test_windows.py::test_max_frames_read_is_the_largest_window_of_any_video",
        "tests/runtime/test_windows.py::"
        "test_by_default_a_window_reads_no_more_than_its_core_and_overlap",
        "tests/runtime/test_windows.py::test_each_window_holds_its_own_frames",
        "tests/runtime/test_windows.py::test_bad_window_settings"],
    "imresize": [
        "tests/model/test_imresize.py::test_one_pixel_lines_resize_and_empty_images_are_refused",
        "tests/model/test_imresize.py::test_interior_of_a_linear_ramp_is_reproduced",
        "tests/model/test_imresize.py::test_scale_one_returns_the_image",
        "tests/model/test_imresize.py::test_weights_sum_to_one_and_indices_stay_inside"],
    "metrics": ["tests/train/test_metrics.py::test_size_limits_are_exact"],
    "evaluate-crop": [
        "tests/train/test_evaluate.py::test_load_clip_errors",
        "tests/train/test_evaluate.py::test_load_clip_takes_the_lr_folder_and_the_first_frames",
        "tests/train/test_evaluate.py::test_crop_bounds_and_lr_size_checks_in_process",
        "tests/train/test_evaluate.py::test_crop_option_values",
        "tests/train/test_evaluate.py::test_bad_crop_option_values"],
}


def settings() -> tuple[dict, dict]:
    """``[tool.mutmut]`` (shared settings) and ``[tool.hirn-mutation]`` (modules, their tests)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    return tool["mutmut"], tool["hirn-mutation"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_value(v) for v in value) + "]"


def staged_pyproject(mutmut: dict, module: dict) -> str:
    """The repository's pyproject.toml with ``[tool.mutmut]`` set for one module."""
    text = (REPO / "pyproject.toml").read_text()
    # drop our tables (the last ones of the file: everything from the first of them on)
    text = re.split(r"^\[tool\.(?:mutmut|hirn-mutation)", text, flags=re.M)[0]
    config = dict(mutmut, only_mutate=[f"src/hirn/{module['path']}"],
                  pytest_add_cli_args_test_selection=module["tests"])
    lines = [f"{k} = {toml_value(v)}" for k, v in config.items()]
    return text.rstrip() + "\n\n[tool.mutmut]\n" + "\n".join(lines) + "\n"


def stage(name: str, mutmut: dict, module: dict, source: str) -> Path:
    """A fresh ``build/mutation/NAME`` with the package as ``src/hirn``."""
    root = STAGE / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "src" / "hirn").mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    if source == "head":
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "head.tar"
            subprocess.run(["git", "archive", "-o", str(archive), "HEAD", *PACKAGES, *COPIED],
                           cwd=REPO, check=True)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            copy_tree(Path(tmp), root, ignore)
        # the tests being measured are the working tree's
        for test in [t for t in module["tests"] if t.endswith(".py")] + list(SUPPORT):
            shutil.copy2(REPO / test, root / test)
    else:
        copy_tree(REPO, root, ignore)
    (root / "pyproject.toml").write_text(staged_pyproject(mutmut, module))
    return root


def copy_tree(source: Path, root: Path, ignore) -> None:
    for package in PACKAGES:
        shutil.copytree(source / package, root / "src" / "hirn" / package, ignore=ignore)
    for folder in COPIED:
        shutil.copytree(source / folder, root / folder, ignore=ignore)


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage's tests (tests/conftest.py points the processes they start
    at the mutated package: set here, PYTHONPATH would hide mutmut's coverage of the tests)."""
    return dict(os.environ, HIRN_SHARED=str(SHARED), OMP_NUM_THREADS="1", **extra)


def mutmut(root: Path, *args: str, log: Path | None = None) -> str:
    env = stage_env(PYTHONHASHSEED="0")
    done = subprocess.run(["mutmut", *args], cwd=root, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if log is not None:
        log.write_text(done.stdout)
    return done.stdout


def statuses_of(root: Path) -> dict[str, str]:
    """mutmut's verdict on every mutant of a stage: killed, survived, no tests, timeout..."""
    statuses = {}
    for line in mutmut(root, "results", "--all", "true").splitlines():
        key, sep, status = line.strip().rpartition(": ")
        if sep and key.startswith("hirn."):
            statuses[key] = status
    return statuses


# Runs each mutant's tests in one plain pytest process (mutmut's trampolines pick the mutant
# from MUTANT_UNDER_TEST), without mutmut's CPU-time limit.
# A mutant still running after RECHECK_S (an endless loop) is stopped: its test fails.
RECHECK_S = 180  # 20x the slowest module's tests (test_liveness.py: about 8 s)
RECHECK = f"""
import json, os, signal, sys
import pytest
sys.path.insert(0, os.path.abspath("src"))

def stop(*_):
    raise TimeoutError("the mutant ran longer than {RECHECK_S} s")

signal.signal(signal.SIGALRM, stop)
codes = {{}}
with open(sys.argv[1]) as listing:
    mutants = json.load(listing)
for name, tests in mutants.items():
    os.environ["MUTANT_UNDER_TEST"] = name
    signal.alarm({RECHECK_S})
    codes[name] = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests]))
    signal.alarm(0)
print("RECHECK " + json.dumps(codes))
"""


def run_plainly(root: Path, tests: dict[str, list[str]], log: str) -> dict[str, int]:
    """pytest's exit code for each mutant, its tests run in one plain pytest process."""
    tests = {k: v for k, v in tests.items() if v}
    if not tests:
        return {}
    env = stage_env()
    listing = root / f"{log}.mutants.json"  # too long for a command line
    listing.write_text(json.dumps(tests))
    done = subprocess.run([sys.executable, "-c", RECHECK, str(listing)], env=env,
                          cwd=root / "mutants", text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    (root / log).write_text(done.stdout)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RECHECK "))
    return json.loads(line[len("RECHECK "):])


def timed_out(root: Path) -> set[str]:
    return {k for k, v in statuses_of(root).items() if v == "timeout"}


def recheck_timeouts(root: Path, statuses: dict[str, str]) -> int:
    """Run the timed-out mutants again without a time limit: killed if a test fails.

    mutmut limits each mutant's CPU time; on a loaded machine, threads that spin while they
    wait for a descheduled peer (OpenCV's, BLAS's) can use it up in a test that would pass,
    so a timeout is no proof of a kill here.
    """
    timeouts = [k for k, v in statuses.items() if v == "timeout"]
    if not timeouts:
        return 0
    by_function = json.loads((root / "mutants" / "mutmut-stats.json").read_text())[
        "tests_by_mangled_function_name"]
    tests = {k: sorted(by_function[k.rsplit("__mutmut_", 1)[0]]) for k in timeouts}
    for key, code in run_plainly(root, tests, "recheck.log").items():
        statuses[key] = {0: "survived", 1: "killed"}.get(code, "suspicious")
    return len(timeouts)


def run_module(name: str, mutmut_settings: dict, module: dict, source: str, jobs: int,
               again: bool, earlier: dict, collect: bool = False) -> dict:
    root = STAGE / name
    patterns = [re.compile(p.replace(".", r"\.").replace("*", ".*") + "$")
                for p in module.get("functions", [])]

    def selected(statuses: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in statuses.items() if not patterns
                or any(p.match(k) for p in patterns)}

    seconds_before = earlier.get("seconds", 0.0)
    new_kills = earlier.get("killed_by_new_tests", []) if (again or collect) else []
    head = git("rev-parse", "--short", "HEAD")
    commit = head  # of the code mutated: the stage's, read when it is made
    if collect or again:  # the stage of the last run: as it was made
        source = earlier.get("source", source)
        commit = earlier.get("commit", head)
    if not (collect or again):
        root = stage(name, mutmut_settings, module, source)
        seconds_before = 0.0
    start = time.monotonic()
    if not (collect or again):
        mutmut(root, "run", "--max-children", str(jobs), *module.get("functions", []),
               log=root / "run.log")
    seconds = time.monotonic() - start + seconds_before
    statuses = selected(statuses_of(root))
    if not statuses:
        sys.exit(f"{name}: mutmut made no mutants (see {root / 'run.log'})")
    # a run stopped early: score the mutants it checked, and say how many it did not
    not_checked = sum(1 for v in statuses.values() if v == "not checked")
    statuses = {k: v for k, v in statuses.items() if v != "not checked"}
    if not statuses:
        sys.exit(f"{name}: no mutant was checked: its tests fail unmutated? (see "
                 f"{root / 'run.log'})")
    verdicts = earlier.get("timeout_verdicts", {}) if (again or collect) else {}
    statuses.update({k: v for k, v in verdicts.items() if statuses.get(k) == "timeout"})
    recheck_timeouts(root, statuses)
    timeouts = timed_out(root)  # once: each call runs mutmut
    verdicts.update({k: statuses[k] for k in statuses if k not in verdicts and k in timeouts})
    for kill in new_kills:
        statuses[kill["mutant"]] = "killed"
    if again:  # the survivors against the tests written for them, in a plain pytest process
        for test in [t for t in module["tests"] if t.endswith(".py")] + list(SUPPORT):
            for where in (root, root / "mutants"):
                shutil.copy2(REPO / test, where / test)
        left = [k for k, v in statuses.items() if v not in ("killed", "timeout")]
        codes = run_plainly(root, {k: NEW_TESTS.get(name, []) for k in left}, "again.log")
        diffs = {s["mutant"]: s["diff"] for s in earlier.get("survivors", [])}
        for key, code in codes.items():
            if code == 1:
                statuses[key] = "killed"
                new_kills.append({"mutant": key, "diff": diffs.get(key, "")})
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = []
    for key, status in sorted(statuses.items()):
        if status in ("killed", "timeout"):
            continue
        diff = mutmut(root, "show", key).split("\n", 1)[-1].strip()
        survivors.append({"mutant": key, "status": status, "diff": diff,
                          "equivalent": EQUIVALENT.get(key)})
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    equivalent = sum(1 for s in survivors if s["equivalent"])
    total = len(statuses)
    return {"path": module["path"], "tests": module["tests"],
            "functions": module.get("functions", []), "mutants": total, "killed": killed,
            "equivalent": equivalent, "unexplained": total - killed - equivalent,
            "score": killed / total, "score_without_equivalent": killed / (total - equivalent),
            "counts": counts, "timeouts_rechecked": len(verdicts), "seconds": round(seconds),
            "source": source, "not_checked": not_checked, "timeout_verdicts": verdicts,
            "commit": commit,
            "retested_at": head if again else earlier.get("retested_at") if collect else None,
            "dirty": source == "worktree" and bool(git("status", "--porcelain", "--", *PACKAGES)),
            "survivors": survivors, "killed_by_new_tests": new_kills}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, text=True, capture_output=True).stdout.strip()


def partial(m: dict) -> str:
    left = m.get("not_checked", 0)
    return f"; stopped early, {left} mutants not checked" if left else ""


def retested(m: dict) -> str:
    at = m.get("retested_at")
    return f"; survivors retested with the tests at {at}" if at else ""


def markdown(modules: dict) -> str:
    total = sum(m["mutants"] for m in modules.values())
    killed = sum(m["killed"] for m in modules.values())
    equivalent = sum(m["equivalent"] for m in modules.values())
    lines = ["# Mutation testing", "",
             "mutmut 3 (`python benchmarks/mutation.py`; settings in pyproject.toml's "
             "`[tool.mutmut]`, modules and their tests in `[tool.hirn-mutation]`), on AMD EPYC, "
             "2 shared cores, no avx512_bf16. A mutant is killed when one of its module's tests "
             "fails. mutmut's timeouts are run again in a plain pytest process without its CPU "
             "limit (on this loaded machine spinning BLAS/OpenCV threads can use up the limit of "
             "a passing test): killed only if a test then fails. A survivor is either equivalent "
             "(no behaviour changes: reason given) or a gap in the tests.", "",
             f"**Overall: {killed}/{total} killed = {killed / total:.1%}; "
             f"{equivalent} equivalent, so {killed}/{total - equivalent} = "
             f"{killed / (total - equivalent):.1%} of the mutants that change behaviour.**", "",
             "| module | mutated | mutants | killed | equivalent | unexplained | score | "
             "score without equivalent | minutes | source |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, m in modules.items():
        part = ", ".join(f"`{f.rsplit('.', 1)[-1]}`" for f in m["functions"]) or "all"
        lines.append(f"| {name} (`{m['path']}`) | {part} | {m['mutants']} | {m['killed']} | "
                     f"{m['equivalent']} | {m['unexplained']} | {m['score']:.1%} | "
                     f"{m['score_without_equivalent']:.1%} | {m['seconds'] / 60:.1f} | "
                     f"{m['source']} at {m['commit']}{' + edits' if m['dirty'] else ''}"
                     f"{retested(m)}{partial(m)} |")
    lines += ["", "Tests run per module:", ""]
    lines += [f"- {name}: " + ", ".join(f"`{t}`" for t in m["tests"])
              for name, m in modules.items()]
    lines += ["", "## Mutants that survived the first run, killed by tests written for them",
              ""]
    for name, m in modules.items():
        if m.get("killed_by_new_tests"):
            lines += [f"{name}, new tests: " + ", ".join(f"`{t}`" for t in NEW_TESTS.get(name, []))
                      + ".", ""]
        for k in m.get("killed_by_new_tests", []):
            lines += [f"- `{k['mutant']}`:", "", "```diff", k["diff"], "```", ""]
    lines += ["", "## Surviving mutants", ""]
    for name, m in modules.items():
        for s in m["survivors"]:
            why = f"equivalent: {s['equivalent']}" if s["equivalent"] else "NOT EXPLAINED"
            lines += [f"### `{s['mutant']}` ({s['status']})", "", why, "", "```diff",
                      s["diff"], "```", ""]
        if not m["survivors"]:
            lines += [f"{name}: none.", ""]
    return "\n".join(lines)


def main() -> None:
    mutmut_settings, modules = settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", default=",".join(modules),
                        help=f"comma-separated, of: {', '.join(modules)}")
    parser.add_argument("--source", choices=("worktree", "head"), default="worktree")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: score what the last run checked (one stopped early)")
    parser.add_argument("--again", action="store_true",
                        help="keep the last run's stage and retest its survivors only, with the "
                             "module's test files (and tests/support.py) as they are now")
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        sys.exit("mutmut is not installed: pip install 'mutmut>=3.8'")
    path = RESULTS / "mutation.json"
    previous = json.loads(path.read_text())["modules"] if path.exists() else {}
    for name in args.modules.split(","):
        if name not in modules:
            sys.exit(f"unknown module {name!r}: one of {', '.join(modules)}")
        print(f"{name}: mutating {modules[name]['path']}", flush=True)
        previous[name] = run_module(name, mutmut_settings, modules[name], args.source, args.jobs,
                                    args.again, previous.get(name, {}), args.collect)
        m = previous[name]
        print(f"{name}: {m['killed']}/{m['mutants']} killed, {m['equivalent']} equivalent, "
              f"{m['unexplained']} unexplained", flush=True)
        write({name: m}, modules)  # each module as it ends: a later one may fail


def write(done: dict, modules: dict) -> None:
    """Merge ``done`` into the results as they are now (other runs may have written their
    modules meanwhile)."""
    path = RESULTS / "mutation.json"
    previous = json.loads(path.read_text())["modules"] if path.exists() else {}
    previous.update(done)
    ordered = {n: previous[n] for n in modules if n in previous}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"tool": f"mutmut {version('mutmut')}", "modules": ordered},
                               indent=2) + "\n")
    (RESULTS / "mutation.md").write_text(markdown(ordered) + "\n")
    print(f"wrote {path} and mutation.md", flush=True)


if __name__ == "__main__":
    main()
