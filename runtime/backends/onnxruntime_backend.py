"""The ``onnxruntime`` backend: per-step graphs from ``hirn-export onnx``.

Two runners share the sessions and the checks of an exported folder:
:class:`OnnxRuntimeRunner` on the CPU, with numpy arrays, and
:class:`OnnxRuntimeCudaRunner` on a GPU (onnxruntime-gpu's CUDA execution provider),
with torch CUDA tensors bound through IO binding, so that features never leave the device
between steps. Shapes and dtypes come from the folder's manifest.

ONNX Runtime's TensorRT execution provider is not offered: it would build engines at run
time without our plugin or engine cache; the ``tensorrt`` backend runs prebuilt engines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hirn.core.errors import BackendError
from hirn.core.graphs import FEATURE, FLOW
from hirn.core.imports import require
from hirn.export.manifest import verify_folder

from .base import BackendConfig, HostArrays, ManifestRunner, check_onnx_config

CPU_PROVIDERS = ("CPUExecutionProvider",)
# Nodes the CUDA provider lacks fall back to the CPU (ONNX Runtime copies for them).
CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _import_onnxruntime():
    return require("onnxruntime", "the onnxruntime backend needs onnxruntime: pip install "
                   "onnxruntime (CPU) or onnxruntime-gpu (NVIDIA), not both")


def concrete_shape(dims: Sequence[int | str], sizes: Mapping[str, int]) -> tuple[int, ...]:
    """A manifest shape (``["batch", 3, "height*4", "width*4"]``) with its symbols bound by
    ``sizes`` (``{"batch": 2, "height": 64, "width": 80}``)."""
    shape = []
    for dim in dims:
        if isinstance(dim, int):
            shape.append(dim)
            continue
        symbol, _, factor = dim.partition("*")
        shape.append(sizes[symbol] * (int(factor) if factor else 1))
    return tuple(shape)


def bound_sizes(specs: Sequence[Mapping], arrays: Sequence) -> dict[str, int]:
    """The symbolic dims of a graph's inputs (``batch``, ``height``, ``width``) bound by the
    arrays given for them."""
    sizes = {}
    for spec, array in zip(specs, arrays):
        for dim, size in zip(spec["shape"], array.shape):
            if isinstance(dim, str) and "*" not in dim:
                sizes[dim] = int(size)
    return sizes


def check_config(config: BackendConfig) -> None:
    """Refuse the options this backend does not have, before any folder is read."""
    check_onnx_config(config, "onnxruntime")


class _SessionRunner(ManifestRunner):
    """One ONNX Runtime session per graph of a verified folder; subclasses own the arrays."""

    name = "onnxruntime"
    providers: tuple[str, ...] = ()  # the first is the one asked for

    def __init__(self, folder: str | Path, device: str, threads: int | None = None,
                 precision: str | None = None):
        """Args:
            folder: a folder from ``hirn-export onnx``.
            device: where the arrays live (``cpu``, ``cuda:N``).
            threads: intra-op threads (None: ONNX Runtime's default).
            precision: the precision asked for, which must be the folder's (None: any).
        """
        ort = _import_onnxruntime()
        self.device = device
        self._take_manifest(folder, verify_folder(Path(folder)))
        self._check_folder(precision)
        graphs = self.manifest["graphs"]
        available = ort.get_available_providers()
        if self.providers[0] not in available:
            raise BackendError(
                f"requested provider {self.providers[0]}, available: {available}. For GPUs: "
                "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        source = str
        if self.manifest["dcn"] == "plugin":
            # the op through onnxruntime-extensions, on an in-memory copy of each graph
            from hirn.export.plugin_ops import cpu_model_bytes, register_cpu_op

            register_cpu_op(options)
            source = cpu_model_bytes
        self.sessions = {name: ort.InferenceSession(source(self.folder / g["file"]), options,
                                                    providers=list(self.providers))
                         for name, g in graphs.items()}
        # Every tensor of a kind has one dtype and channel count (hirn.core.graphs).
        self.tensor_kinds = {t["kind"]: t for g in graphs.values()
                             for t in (*g["inputs"], *g["outputs"])}
        self.element_size = np.dtype(self.tensor_kinds[FEATURE]["dtype"]).itemsize

    def _check_folder(self, precision: str | None) -> None:
        exported = self.manifest["precision"]
        if precision is not None and precision != exported:
            raise BackendError(
                f"{self.folder} holds {exported} graphs, not {precision}: leave --precision "
                f"out, or export {precision} graphs (hirn-export onnx --precision {precision})")

    def _zeros_spec(self, kind: str, batch: int, height: int, width: int):
        """Shape and dtype of a missing ``feature`` or ``flow`` input."""
        spec = self.tensor_kinds[FLOW if kind == "flow" else FEATURE]
        sizes = {"batch": batch, "height": height, "width": width}
        return concrete_shape(spec["shape"], sizes), spec["dtype"]

    def _close_impl(self) -> None:
        self.sessions.clear()  # each InferenceSession frees its arena when dropped

    def describe(self) -> str:
        import onnxruntime

        return (f"onnxruntime {onnxruntime.__version__} ({self.providers[0]}, "
                f"{self.manifest['precision']}, dcn={self.manifest['dcn']})")


class OnnxRuntimeRunner(HostArrays, _SessionRunner):
    """ONNX Runtime on the CPU; arrays are numpy arrays."""

    providers = CPU_PROVIDERS

    def __init__(self, folder: str | Path, threads: int | None = None,
                 precision: str | None = None):
        super().__init__(folder, "cpu", threads, precision)

    @classmethod
    def from_config(cls, config: BackendConfig) -> OnnxRuntimeRunner:
        check_config(config)
        return cls(config.onnx_dir, config.threads, config.precision)

    def _run_impl(self, graph: str, inputs: Sequence):
        return self.sessions[graph].run(None, dict(zip(self.graph_inputs[graph], inputs)))[0]

    def zeros(self, kind: str, batch: int, height: int, width: int):
        shape, dtype = self._zeros_spec(kind, batch, height, width)
        return np.zeros(shape, dtype=dtype)


class OnnxRuntimeCudaRunner(_SessionRunner):
    """ONNX Runtime's CUDA execution provider; arrays are torch CUDA tensors, bound to the
    sessions by address (IO binding)."""

    providers = CUDA_PROVIDERS

    def __init__(self, folder: str | Path, device: str = "cuda", threads: int | None = None,
                 precision: str | None = None):
        import torch  # device arrays for IO binding

        self._torch = torch
        self.device_id = int(device.partition(":")[2] or 0)
        super().__init__(folder, f"cuda:{self.device_id}", threads, precision)

    def _check_folder(self, precision: str | None) -> None:
        super()._check_folder(precision)
        if self.manifest["dcn"] == "plugin":
            raise BackendError(f"{self.folder} uses the HirnDeformConv plugin op, which ONNX "
                               "Runtime runs on the CPU only: use --device cpu, the tensorrt "
                               "backend, or export with --dcn onnx")

    @classmethod
    def from_config(cls, config: BackendConfig) -> OnnxRuntimeCudaRunner:
        check_config(config)
        return cls(config.onnx_dir, config.device, config.threads, config.precision)

    def _dtype(self, name: str):
        return {"float32": self._torch.float32, "float16": self._torch.float16}[name]

    def _run_impl(self, graph: str, inputs: Sequence):
        entry = self.manifest["graphs"][graph]
        binding = self.sessions[graph].io_binding()
        tensors = []
        for spec, tensor in zip(entry["inputs"], inputs):
            if tensor.dtype != self._dtype(spec["dtype"]) or str(tensor.device) != self.device:
                raise TypeError(f"{graph}.{spec['name']} must be {spec['dtype']} on "
                                f"{self.device}, got {tensor.dtype} on {tensor.device}")
            tensor = tensor.contiguous()
            tensors.append(tensor)  # alive until the run ends
            binding.bind_input(spec["name"], "cuda", self.device_id, np.dtype(spec["dtype"]),
                               list(tensor.shape), tensor.data_ptr())
        out_spec = entry["outputs"][0]
        shape = concrete_shape(out_spec["shape"], bound_sizes(entry["inputs"], tensors))
        out = self._torch.empty(shape, dtype=self._dtype(out_spec["dtype"]), device=self.device)
        binding.bind_output(out_spec["name"], "cuda", self.device_id,
                            np.dtype(out_spec["dtype"]), list(shape), out.data_ptr())
        self.sessions[graph].run_with_iobinding(binding)
        return out

    def from_numpy(self, frames: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(
            self.device)

    def to_numpy(self, array) -> np.ndarray:
        return array.float().cpu().numpy()

    def zeros(self, kind: str, batch: int, height: int, width: int):
        shape, dtype = self._zeros_spec(kind, batch, height, width)
        return self._torch.zeros(shape, dtype=self._dtype(dtype), device=self.device)

    def concat(self, arrays: Sequence):
        return self._torch.cat(list(arrays))

    def split(self, array) -> list:
        return list(array.split(1, dim=0))
