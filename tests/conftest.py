"""Skips GPU and TensorRT tests, with the reason, where those are absent; marks the slow
and the serial tests (below).

Tiers: ``pytest -n 2 -m "not slow"`` is the local loop (about a minute on 2 cores); CI
(``.ci/run``) runs everything, the ``serial`` tests alone after the others.
"""

import ast
import functools
import importlib.util
import inspect
import os
import sys
import textwrap
from pathlib import Path

import pytest

# real media and small models (tests/clips.py), for the runtime, media and model tests
pytest_plugins = ["clips"]

TESTS = Path(__file__).resolve().parent

# ``slow`` by a rule, so that new tests are marked too (several test files change often): a
# test is slow when it, a helper of the test modules it calls or a fixture it uses (each
# read as source) starts a process (our console scripts, torchrun, python, nvcc, cmake) or
# trains. Starting hirn-run costs seconds of imports alone, and a training run far more.
PROCESS_CALLS = {"run_cli", "Popen", "subprocess.Popen", "subprocess.run", "subprocess.call",
                 "subprocess.check_call", "subprocess.check_output"}
TRAIN_CALLS = {"train"}  # hirn.train.loop.train, in this process

# ``slow`` by name: in-process tests that take over 3 s (a case), with the seconds measured
# as CI runs them (two xdist workers of one thread on 2 cores). By file and test name, so
# that a test moved to another folder keeps its mark.
SLOW = {
    "test_tiles.py::test_hirn_run_recomputes_backward_maps_when_only_that_fits": 24,
    "test_execution_order.py::test_driver_output_is_bit_identical_to_the_plan_order": 16,
    "test_reference_parity.py::test_cpu_float32_matches_original": 15,
    "test_execution_order.py::test_model_forward_is_bit_identical_to_the_plan_order": 9,
    "test_faults.py::test_half_precision_windows_with_nan_are_computed_again_in_fp32": 7,
    "test_torch_backend.py::test_compiled_step_module_equals_the_eager_one": 7,
    "test_model.py::test_non_square_batch_of_two": 7,
    "test_replay_buffers.py::test_replayed_steps_give_the_eager_output": 6,
    "test_openvino_backend.py::test_folders_it_cannot_read_and_other_backends_on_gpu_are_refused":
        6,
    "test_tiles.py::test_tile_seams_stay_within_tolerance_with_an_overlap": 6,
    "test_tiles.py::test_hirn_run_takes_a_1080p_video_in_automatic_tiles": 5,
    "test_driver.py::test_torch_backend_clip_matches_original": 5,
    "test_driver.py::test_decoding_only_the_kept_frames_gives_the_same_frames": 4,
    "test_plugin_graphs.py::test_whole_clip_plugin_folder_equals_deformconv_folder": 3,
    # starts pytest, through benchmarks/gpu_check_parts.py (outside what the rule reads)
    "test_gpu_check.py::test_the_gpu_tests_part_reports_each_test": 1,
}

# ``serial`` (and slow): tests that measure time or memory, which another test running
# beside them would skew; CI runs them alone, after the others. By file and test name.
SERIAL = {
    "test_memory.py::test_bound_against_a_measured_window":
        "the peak RSS of a window, in two processes of its own",
    "test_memory.py::test_hirn_run_refuses_frames_too_large_for_this_machine":
        "reads the memory left free, then fills much of it (8000x8000 frames)",
    "test_faults.py::test_advice_for_a_window_of_100000_frames_answers_within_seconds":
        "answers within ADVICE_SECONDS",
    "test_faults.py::test_hirn_run_with_window_100000_on_a_raw_h264_stream_does_not_hang":
        "finishes within half its timeout",
}


def _gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def _trt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'hirn[tensorrt]' on an NVIDIA machine)"
    return _gpu_reason()


def pytest_configure(config):
    """Under pytest-xdist the workers share the cores: each gets its share of threads (torch
    in this process and in the processes a test starts), where each would take them all
    (two workers of two threads on 2 cores: the fast tier took 67 s, against 61 s)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if "torch" in sys.modules:  # too late for the variable to count in this process
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    # OpenVINO's tests run last: once its runtime is loaded into the test process, a signal
    # raised in that process crashes it (SIGSEGV), and the training tests raise SIGINT in it.
    items.sort(key=lambda item: "test_openvino_backend" in item.nodeid)  # a stable sort
    reasons = {"gpu": _gpu_reason(), "trt": _trt_reason()}
    for item in items:
        for mark, reason in reasons.items():
            if reason and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        if name in SERIAL:
            item.add_marker(pytest.mark.serial)
        if name in SLOW or "serial" in item.keywords or _starts_a_process_or_trains(item):
            item.add_marker(pytest.mark.slow)


def _starts_a_process_or_trains(item) -> bool:
    functions = [getattr(item, "function", None)]
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is not None:  # every fixture the test uses, directly or through others
        functions += [defs[-1].func for defs in fixtures.name2fixturedefs.values() if defs]
    seen, todo = set(), [f for f in functions if f is not None]
    while todo:
        function = inspect.unwrap(todo.pop())
        if function in seen:
            continue
        seen.add(function)
        calls, helpers = _read(function)
        if calls & (PROCESS_CALLS | TRAIN_CALLS):
            return True
        todo += helpers
    return False


@functools.cache
def _read(function) -> tuple[frozenset[str], tuple]:
    """What ``function`` calls (``name`` or ``module.name``), and the functions of the test
    modules it names (helpers, read in turn); nothing for functions outside the tests."""
    try:
        path = inspect.getsourcefile(function)
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return frozenset(), ()
    if path is None or not Path(path).resolve().is_relative_to(TESTS):
        return frozenset(), ()  # pytest's own fixtures (tmp_path, monkeypatch, ...)
    names = getattr(function, "__globals__", {})
    calls, helpers = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.add(node.func.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name):
            calls.add(f"{node.func.value.id}.{node.func.attr}")  # not x.train(): a method
        elif isinstance(node, ast.Name) and inspect.isfunction(names.get(node.id)):
            helpers.append(names[node.id])
    return frozenset(calls), tuple(helpers)


@pytest.fixture(autouse="MUTANT_UNDER_TEST" in os.environ)
def _fresh_caches_under_mutation():
    """Under mutation testing many mutants run in one process (or in processes forked from
    one): results cached by hirn's functions (the plan, schedules) would be the unmutated
    code's. Each test starts with the caches empty."""
    for name, module in list(sys.modules.items()):
        if name.startswith("hirn"):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()


@pytest.fixture(autouse="MUTANT_UNDER_TEST" in os.environ)
def _subprocesses_import_the_mutant(monkeypatch):
    """Under mutation testing this process imports a mutated copy of hirn: the processes a
    test starts (hirn-run as a subprocess, a writer killed mid-file) must import that copy
    too, not the installed package (they inherit MUTANT_UNDER_TEST)."""
    import hirn.core

    mutated = str(Path(hirn.core.__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (mutated, os.environ.get("PYTHONPATH")) if p))


@pytest.fixture
def exact_fp32():
    """FP32 on CUDA without TF32 (PyTorch's default runs convolutions in TF32), restored after."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="session")
def reference_graphs(tmp_path_factory):
    """``get(dcn)``: the reference weights exported by ``hirn-export onnx``, once per form."""
    from support import REFERENCE_WEIGHTS, run_cli

    folders = {}

    def get(dcn: str = "onnx"):
        if dcn not in folders:
            folder = tmp_path_factory.mktemp("graphs") / dcn
            result = run_cli("hirn-export", "onnx", str(REFERENCE_WEIGHTS), "-o", str(folder),
                             "--dcn", dcn)
            assert result.returncode == 0, result.stderr
            folders[dcn] = folder
        return folders[dcn]

    return get


def pytest_terminal_summary(terminalreporter):
    """Lines that tests record as ``record_property("summary", ...)``: what CI should show
    (e.g. which TensorRT headers the plugin was compiled against)."""
    lines = [value for report in terminalreporter.stats.get("passed", [])
             if report.when == "call"
             for name, value in report.user_properties if name == "summary"]
    if lines:
        terminalreporter.section("recorded")
        for line in lines:
            terminalreporter.write_line(line)

