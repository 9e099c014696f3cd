"""Backends behind one interface; the only place that maps a backend name to a runner."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

from hirn.core.errors import BackendError

from .base import BACKENDS, BackendConfig, Runner


def _runner_class(config: BackendConfig) -> type[Runner]:
    """The class that runs ``config``: by backend, and for ONNX Runtime by device (numpy
    arrays on the CPU, torch tensors with IO binding on CUDA). Heavy imports happen here."""
    if config.device.startswith("gpu") and config.backend != "openvino":
        raise BackendError(f"--device {config.device} (Intel graphics) runs with --backend "
                           f"openvino only; NVIDIA GPUs are --device cuda")
    if config.backend == "torch":
        from .torch_backend import TorchRunner

        return TorchRunner
    if config.backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeCudaRunner, OnnxRuntimeRunner

        return OnnxRuntimeRunner if config.device == "cpu" else OnnxRuntimeCudaRunner
    if config.backend == "openvino":
        from .openvino_backend import OpenVinoRunner

        return OpenVinoRunner
    if config.backend == "tensorrt":
        from .tensorrt_backend import TensorRTRunner

        return TensorRTRunner
    raise BackendError(f"unknown backend {config.backend!r}; choose from {BACKENDS}")


def create_runner(config: BackendConfig) -> Runner:
    """The runner of ``config``; its ``from_config`` checks the options it takes."""
    return _runner_class(config).from_config(config)


def _openvino_reads(config: BackendConfig) -> bool:
    """Whether OpenVINO is installed and the ONNX folder holds graphs it reads (FP32, not the
    TensorRT plugin's op); a folder that cannot be read is left to the runner's errors."""
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        manifest = json.loads((config.onnx_dir / "manifest.json").read_text())
        return manifest["precision"] == "fp32" and manifest["dcn"] in ("onnx", "decomposed")
    except (OSError, ValueError, KeyError, TypeError):
        return False


def fastest_cpu_path(config: BackendConfig, backend_given: bool) -> tuple[BackendConfig, str]:
    """On the CPU, the fastest path that keeps the quality bar (benchmarks/results/cpu_speed.md)
    where the options leave it open, and a line saying which.

    An ONNX folder runs with OpenVINO (faster than ONNX Runtime) unless ``--backend`` named
    one or the precision asked for is one OpenVINO's CPU lacks (fp16). The precision stays
    FP32 unless ``--precision bf16`` asks otherwise: bfloat16's quality on the real model is
    not measured yet on a CPU that has it (benchmarks/results/cpu_speed.md), so it is not
    chosen for the user. Other devices and backends are left as given.
    """
    if config.device != "cpu":
        return config, ""
    if (not backend_given and config.backend == "onnxruntime"
            and config.precision in (None, "fp32", "bf16") and _openvino_reads(config)):
        config = replace(config, backend="openvino")
    if config.precision is None and config.backend in ("openvino", "torch"):
        config = replace(config, precision="fp32")
    if config.backend not in ("openvino", "torch", "onnxruntime"):
        return config, ""
    precision = config.precision or "the folder's precision"
    exact = ("" if precision == "fp32" else
             "; --precision fp32 for output equal to FP32")
    return config, f"{config.backend} {precision} on cpu{exact}"


__all__ = ["BACKENDS", "BackendConfig", "BackendError", "Runner", "create_runner",
           "fastest_cpu_path"]
