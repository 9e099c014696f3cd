"""Skips GPU and TensorRT tests, with the reason, where those are absent."""

import importlib.util

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
    reasons = {"gpu": _gpu_reason(), "trt": _trt_reason()}
    for item in items:
        for mark, reason in reasons.items():
            if reason and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
