"""The ``onnxruntime`` backend: per-step graphs from ``hirn-export onnx``.

On the CPU, arrays are numpy arrays. On a GPU (onnxruntime-gpu with the CUDA
or TensorRT execution provider), arrays are torch CUDA tensors bound through
IO binding, so features never leave the device between steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hirn.core.errors import BackendError, ModelFolderError
from hirn.core.graphs import graph_specs
from hirn.export.manifest import verify_folder

from .base import BackendConfig, Runner

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError("the onnxruntime backend needs onnxruntime: pip install onnxruntime "
                           "(CPU) or onnxruntime-gpu (NVIDIA), not both") from exc
    return onnxruntime


class OnnxRuntimeRunner(Runner):
    """Runs the graphs of an exported folder with ONNX Runtime sessions."""

    name = "onnxruntime"

    def __init__(self, folder: str | Path, provider: str = "cpu", threads: int | None = None,
                 device_id: int = 0):
        ort = _import_onnxruntime()
        self.folder = Path(folder)
        self.manifest = verify_folder(self.folder)
        graphs = self.manifest["graphs"]
        needed = [s.name for s in graph_specs(self.manifest["model"]["mid_channels"])]
        if missing := [name for name in needed if name not in graphs]:
            raise ModelFolderError(f"{self.folder} lacks the graphs {missing}; export the "
                                   "whole model with hirn-export onnx")
        super().__init__({name: [t["name"] for t in g["inputs"]] for name, g in graphs.items()},
                         self.manifest["model"]["mid_channels"])
        if provider not in PROVIDERS:
            raise BackendError(f"unknown ONNX Runtime provider {provider!r}; "
                               f"choose from {sorted(PROVIDERS)}")
        wanted, available = PROVIDERS[provider], ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendError(
                f"requested provider {wanted[0]}, available: {available}. For GPUs: "
                "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
        plugin = self.manifest["dcn"] == "plugin"
        if plugin and provider != "cpu":
            raise BackendError(f"{self.folder} uses the HirnDeformConv plugin op, which ONNX "
                               "Runtime runs on the CPU only: use --device cpu, the tensorrt "
                               "backend, or export with --dcn onnx")
        self.provider, self.device_id = provider, device_id
        self.on_gpu = provider != "cpu"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        source = str
        if plugin:  # the op through onnxruntime-extensions, on an in-memory copy of each graph
            from hirn.export.plugin_ops import cpu_model_bytes, register_cpu_op

            register_cpu_op(options)
            source = cpu_model_bytes
        self.sessions = {name: ort.InferenceSession(source(self.folder / g["file"]), options,
                                                    providers=wanted)
                         for name, g in graphs.items()}
        self.feature_dtype = _NUMPY_DTYPES[graphs["encode"]["outputs"][0]["dtype"]]
        if self.on_gpu:
            import torch  # device arrays for IO binding

            self._torch = torch

    @classmethod
    def from_config(cls, config: BackendConfig) -> OnnxRuntimeRunner:
        if config.onnx_dir is None:
            raise BackendError("the onnxruntime backend needs --onnx DIR "
                               "(make one with: hirn-export onnx CHECKPOINT -o DIR)")
        provider = "cpu" if config.device == "cpu" else "cuda"
        device_id = int(config.device.split(":")[1]) if ":" in config.device else 0
        return cls(config.onnx_dir, provider, config.threads, device_id)

    def _run_impl(self, graph: str, inputs: Sequence):
        session = self.sessions[graph]
        names = self.graph_inputs[graph]
        if not self.on_gpu:
            return session.run(None, dict(zip(names, inputs)))[0]
        return self._run_bound(graph, session, names, inputs)

    def _run_bound(self, graph, session, names, inputs):
        torch = self._torch
        binding = session.io_binding()
        for name, tensor in zip(names, inputs):
            tensor = tensor.contiguous()
            binding.bind_input(name, "cuda", self.device_id, _NUMPY_DTYPES[str(tensor.dtype)[6:]],
                               list(tensor.shape), tensor.data_ptr())
        out_spec = self.manifest["graphs"][graph]["outputs"][0]
        batch, _, height, width = inputs[0].shape
        scale = 4 if out_spec["kind"] == "output" else 1
        dtype = torch.float16 if out_spec["dtype"] == "float16" else torch.float32
        out = torch.empty(batch, out_spec["shape"][1], height * scale, width * scale, dtype=dtype,
                          device=f"cuda:{self.device_id}")
        binding.bind_output(out_spec["name"], "cuda", self.device_id,
                            _NUMPY_DTYPES[out_spec["dtype"]], list(out.shape), out.data_ptr())
        session.run_with_iobinding(binding)
        return out

    def from_numpy(self, frames: np.ndarray):
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        if self.on_gpu:
            return self._torch.from_numpy(frames).to(f"cuda:{self.device_id}")
        return frames

    def to_numpy(self, array) -> np.ndarray:
        if self.on_gpu:
            return array.float().cpu().numpy()
        return np.asarray(array, dtype=np.float32)

    def zeros(self, kind: str, batch: int, height: int, width: int):
        channels, dtype = (2, np.float32) if kind == "flow" else (self.mid_channels,
                                                                   self.feature_dtype)
        if self.on_gpu:
            torch = self._torch
            return torch.zeros(batch, channels, height, width, device=f"cuda:{self.device_id}",
                               dtype=torch.float16 if dtype == np.float16 else torch.float32)
        return np.zeros((batch, channels, height, width), dtype=dtype)

    def concat(self, arrays: Sequence):
        return self._torch.cat(list(arrays)) if self.on_gpu else np.concatenate(arrays, axis=0)

    def split(self, array) -> list:
        if self.on_gpu:
            return list(array.split(1, dim=0))
        return [array[i:i + 1] for i in range(array.shape[0])]

    def describe(self) -> str:
        import onnxruntime

        return (f"onnxruntime {onnxruntime.__version__} ({PROVIDERS[self.provider][0]}, "
                f"{self.manifest['precision']}, dcn={self.manifest['dcn']})")
