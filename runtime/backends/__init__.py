"""Backends behind one interface; the only place that maps a backend name to a class."""

from __future__ import annotations

from hirn.core.errors import BackendError

from .base import BACKENDS, BackendConfig, Runner


def create_runner(config: BackendConfig) -> Runner:
    """The runner ``config.backend`` names; its heavy imports happen only here."""
    if config.backend == "torch":
        from .torch_backend import TorchRunner

        return TorchRunner.from_config(config)
    if config.backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeRunner

        return OnnxRuntimeRunner.from_config(config)
    if config.backend == "tensorrt":
        from .tensorrt_backend import TensorRTRunner

        return TensorRTRunner.from_config(config)
    raise BackendError(f"unknown backend {config.backend!r}; choose from {BACKENDS}")


__all__ = ["BACKENDS", "BackendConfig", "BackendError", "Runner", "create_runner"]
