"""Skips GPU and TensorRT tests, with the reason, where those are absent."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest


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


def pytest_collection_modifyitems(config, items):
    # OpenVINO's tests run last: once its runtime is loaded into the test process, a signal
    # raised in that process crashes it (SIGSEGV), and the training tests raise SIGINT in it.
    items.sort(key=lambda item: "test_openvino_backend" in item.nodeid)  # a stable sort
    reasons = {"gpu": _gpu_reason(), "trt": _trt_reason()}
    for item in items:
        for mark, reason in reasons.items():
            if reason and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


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

