"""Backends behind one interface; the only place that maps a backend name to a runner."""

from __future__ import annotations

from hirn.core.errors import BackendError

from .base import BACKENDS, BackendConfig, Runner


def _runner_class(config: BackendConfig) -> type[Runner]:
    """The class that runs ``config``: by backend, and for ONNX Runtime by device (numpy
    arrays on the CPU, torch tensors with IO binding on CUDA). Heavy imports happen here."""
    if config.backend == "torch":
        from .torch_backend import TorchRunner

        return TorchRunner
    if config.backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeCudaRunner, OnnxRuntimeRunner

        return OnnxRuntimeRunner if config.device == "cpu" else OnnxRuntimeCudaRunner
    if config.backend == "tensorrt":
        from .tensorrt_backend import TensorRTRunner

        return TensorRTRunner
    raise BackendError(f"unknown backend {config.backend!r}; choose from {BACKENDS}")


def create_runner(config: BackendConfig) -> Runner:
    """The runner of ``config``; its ``from_config`` checks the options it takes."""
    return _runner_class(config).from_config(config)


__all__ = ["BACKENDS", "BackendConfig", "BackendError", "Runner", "create_runner"]
