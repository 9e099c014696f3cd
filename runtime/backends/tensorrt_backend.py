"""The ``tensorrt`` backend: the engines of ``hirn-export engine``, on one CUDA stream.

Arrays are torch CUDA tensors. Every operation of this runner (uploads, engine runs, output
allocation, concatenation, zeros) is issued on one ``torch.cuda.Stream``, so work is ordered
without synchronisation and memory the caching allocator recycles is never still in use;
nothing returns to the host until ``to_numpy``. Each engine has one execution context; inputs
and outputs are bound by address (``set_tensor_address``) and run with ``execute_async_v3``.

Three rules of the TensorRT API shape this module (NvInferRuntime.h, 10.x and 11.x):

- ``torch.device("cuda")`` has no index and never equals a tensor's ``cuda:N``: the runner
  keeps the device with its index (:func:`cuda_device`).
- ``setTensorAddress`` needs 256-byte aligned pointers, and batch-1 views of a batched tensor
  (``split``) start ``C*H*W*element_size`` bytes apart: a tensor that is not aligned is copied
  into an aligned buffer before it is bound (:func:`aligned`).
- The engines run one after another on one stream, so they share one activation buffer
  sized to the largest (contexts created ``USER_MANAGED``, ``set_device_memory``) instead of
  holding one each (:func:`create_contexts`).

With ``cuda_graphs=True`` the step engines (batch 1, the same size for a whole clip) are
captured into a CUDA graph after their first run at a shape and replayed afterwards; inputs
are copied into the graph's static buffers and the output is copied out of it. A shape change
captures again (TensorRT requires a run after a shape change before capture).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hirn.core.errors import BackendError, EngineFolderError
from hirn.core.graphs import graph_specs
from hirn.core.imports import require
from hirn.export.engine_cache import (
    PLUGIN_LIBRARY_NAME,
    TENSORRT_HINT,
    check_compatible,
    check_shape,
    current_gpu,
    verify_engine_folder,
)

from .base import BackendConfig, ManifestRunner, refuse_compile

if TYPE_CHECKING:
    from torch import device as torch_device

TENSOR_ALIGNMENT = 256      # bytes: IExecutionContext::setTensorAddress
ACTIVATION_ALIGNMENT = 512  # bytes: setDeviceMemoryV2 wants CUDA's allocation alignment


def _import_tensorrt():
    return require("tensorrt", f"the tensorrt backend needs TensorRT: {TENSORRT_HINT}")


def cuda_device(device: str, current_device: Callable[[], int]) -> torch_device:
    """``device`` ("cuda", "cuda:N") as a torch device with its index; a bare "cuda" means
    ``current_device()``. Tensors report ``cuda:N``, and ``torch.device("cuda")`` equals none
    of them."""
    import torch

    resolved = torch.device(device)
    if resolved.type != "cuda":
        raise BackendError(f"the tensorrt backend runs on CUDA devices, not {device!r}")
    return resolved if resolved.index is not None else torch.device("cuda", current_device())


def empty_aligned(shape: Sequence[int], dtype, device, alignment: int = TENSOR_ALIGNMENT):
    """An uninitialised tensor whose first byte is ``alignment``-aligned, on any device (the
    CUDA caching allocator aligns to 512 bytes, the CPU allocator only to 64)."""
    import torch

    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.empty(nbytes + alignment, dtype=torch.uint8, device=device)
    start = -raw.data_ptr() % alignment
    return raw[start:start + nbytes].view(dtype).view(tuple(shape))


def aligned_copy(tensor):
    """A contiguous copy of ``tensor`` that starts on a 256-byte boundary."""
    copy = empty_aligned(tensor.shape, tensor.dtype, tensor.device)
    copy.copy_(tensor)
    return copy


def aligned(tensor):
    """``tensor`` itself when TensorRT may bind it (contiguous, 256-byte aligned), else an
    aligned copy: views from ``split`` start wherever the previous frame ended."""
    if tensor.is_contiguous() and tensor.data_ptr() % TENSOR_ALIGNMENT == 0:
        return tensor
    return aligned_copy(tensor)


def create_contexts(trt, engines: dict, allocate: Callable[[int], object]) -> tuple[dict, object]:
    """One execution context per engine, all on one activation buffer of the largest engine's
    size (``allocate(nbytes)`` returns it). Safe because the runner runs its engines one after
    another on one stream: no two use the buffer at once. Returns (contexts, buffer)."""
    size = max((int(e.device_memory_size_v2) for e in engines.values()), default=0)
    buffer = allocate(size)
    address = buffer.data_ptr() if size else 0
    contexts = {}
    for name, engine in engines.items():
        context = engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise BackendError(f"TensorRT could not create an execution context for {name} "
                               "(see its log above)")
        context.set_device_memory(address, size)
        contexts[name] = context
    return contexts, buffer


def check_engine_folder(folder: Path, batch_size: int | None = None) -> dict:
    """The verified manifest of an engine folder holding every graph the runtime calls;
    ``batch_size`` (frames per batchable call) must fit the engines' profile."""
    manifest = verify_engine_folder(folder)
    needed = [s.name for s in graph_specs(manifest["model"]["mid_channels"])]
    if missing := [name for name in needed if name not in manifest["graphs"]]:
        raise EngineFolderError(f"{folder} lacks the engines {missing}; build all of them with "
                               "hirn-export engine")
    max_batch = manifest["profile"]["max_batch"]
    if batch_size is not None and batch_size > max_batch:
        raise BackendError(f"batch size {batch_size} exceeds the engines' --max-batch "
                           f"{max_batch}: use a batch size <= {max_batch} or rebuild the "
                           "engines with a larger --max-batch")
    return manifest


@dataclass
class _Captured:
    """A step engine captured at one input shape."""

    shapes: tuple
    inputs: list      # static input buffers the graph reads
    output: object    # static output buffer the graph writes
    graph: object     # torch.cuda.CUDAGraph


class TensorRTRunner(ManifestRunner):
    """Runs the per-step TensorRT engines of an engine folder on one GPU."""

    name = "tensorrt"

    def __init__(self, folder: str | Path, device: str = "cuda", cuda_graphs: bool = False,
                 batch_size: int | None = None):
        """Args:
            folder: a folder from ``hirn-export engine``.
            device: the CUDA device the engines were built for ("cuda", "cuda:N").
            cuda_graphs: replay the step engines from CUDA graphs.
            batch_size: frames per batchable call the driver will send (checked against
                the engines' ``--max-batch``).
        """
        self._take_manifest(folder, check_engine_folder(Path(folder), batch_size))
        graphs = self.manifest["graphs"]
        self.element_size = np.dtype(graphs["encode"]["outputs"][0]["dtype"]).itemsize
        trt = _import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs a CUDA GPU, and PyTorch "
                               f"{torch.__version__} sees none (a CUDA build of PyTorch is "
                               "needed)")
        self._torch, self._trt = torch, trt
        self.device = cuda_device(device, torch.cuda.current_device)
        self.cuda_graphs = cuda_graphs
        self._dtypes = {"float32": torch.float32, "float16": torch.float16}
        with torch.cuda.device(self.device):
            check_compatible(self.manifest, trt.__version__, current_gpu(self.device.index))
            self.stream = torch.cuda.Stream(self.device)
            self._logger = trt.Logger(trt.Logger.WARNING)
            trt.init_libnvinfer_plugins(self._logger, "")
            if self.manifest.get("plugin_library"):
                from hirn.core.errors import EngineBuildError
                from hirn.export.engine import load_plugin_library

                try:
                    load_plugin_library(trt, self.folder / PLUGIN_LIBRARY_NAME)
                except EngineBuildError as exc:
                    raise BackendError(str(exc)) from exc
            self._runtime = trt.Runtime(self._logger)
            self.engines = {}
            for name, entry in graphs.items():
                engine = self._runtime.deserialize_cuda_engine(
                    (self.folder / entry["file"]).read_bytes())
                if engine is None:
                    raise BackendError(f"TensorRT could not load {self.folder / entry['file']} "
                                       "(see its log above); rebuild the engines")
                self._check_io(name, engine, entry)
                self.engines[name] = engine
            self.contexts, self._activations = create_contexts(
                trt, self.engines, lambda nbytes: empty_aligned(
                    (nbytes,), torch.uint8, self.device, ACTIVATION_ALIGNMENT))
        self._captured: dict[str, _Captured] = {}

    def _check_io(self, graph: str, engine, entry: dict) -> None:
        """The engine's tensors must be the manifest's, with the same dtypes."""
        trt = self._trt
        io = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            io[name] = (engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                        np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name)
        expected = {t["name"]: (True, t["dtype"]) for t in entry["inputs"]}
        expected.update({t["name"]: (False, t["dtype"]) for t in entry["outputs"]})
        if io != expected:
            raise BackendError(f"the engine of {graph} has tensors {io}, engines.json says "
                               f"{expected}; rebuild the engines")

    @classmethod
    def from_config(cls, config: BackendConfig) -> TensorRTRunner:
        """``config.engines_dir`` on ``config.device`` ("cpu", the default, means the
        current CUDA device: TensorRT runs on GPUs only)."""
        refuse_compile(config, "tensorrt")
        if config.engines_dir is None:
            raise BackendError("the tensorrt backend needs --engines DIR (make one with: "
                               "hirn-export engine ONNX_DIR -o DIR --min HxW --opt HxW --max HxW)")
        device = "cuda" if config.device == "cpu" else config.device
        return cls(config.engines_dir, device, getattr(config, "cuda_graphs", False),
                   config.batch_size)

    def _run_impl(self, graph: str, inputs: Sequence):
        torch = self._torch
        entry = self.manifest["graphs"][graph]
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            tensors = []
            for tensor, spec in zip(inputs, entry["inputs"]):
                if tensor.dtype != self._dtypes[spec["dtype"]] or tensor.device != self.device:
                    raise TypeError(f"{graph}.{spec['name']} must be {spec['dtype']} on "
                                    f"{self.device}, got {tensor.dtype} on {tensor.device}")
                tensors.append(aligned(tensor))
            batch, _, height, width = tensors[0].shape
            check_shape(graph, entry, batch, height, width)
            if self.cuda_graphs and graph.startswith("step_"):
                return self._run_captured(graph, tensors)
            return self._execute(graph, tensors)

    def _execute(self, graph: str, tensors: list):
        """Bind ``tensors`` and a new output, enqueue the engine on the stream."""
        context = self.contexts[graph]
        entry = self.manifest["graphs"][graph]
        for spec, tensor in zip(entry["inputs"], tensors):
            if not context.set_input_shape(spec["name"], tuple(tensor.shape)):
                raise BackendError(f"{graph}: TensorRT refused shape {tuple(tensor.shape)} for "
                                   f"{spec['name']}")
            context.set_tensor_address(spec["name"], tensor.data_ptr())
        out_spec = entry["outputs"][0]
        shape = tuple(context.get_tensor_shape(out_spec["name"]))
        out = empty_aligned(shape, self._dtypes[out_spec["dtype"]], self.device)
        context.set_tensor_address(out_spec["name"], out.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT failed to run {graph} (see its log above)")
        return out

    def _run_captured(self, graph: str, tensors: list):
        torch = self._torch
        shapes = tuple(tuple(t.shape) for t in tensors)
        captured = self._captured.get(graph)
        if captured is not None and captured.shapes == shapes:
            for static, tensor in zip(captured.inputs, tensors):
                static.copy_(tensor)
            captured.graph.replay()
            return captured.output.clone()
        self._captured.pop(graph, None)
        static_inputs = [aligned_copy(t) for t in tensors]
        output = self._execute(graph, static_inputs)  # the run TensorRT needs before capture
        result = output.clone()
        cuda_graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(cuda_graph, stream=self.stream,
                                  capture_error_mode="thread_local"):
                ok = self.contexts[graph].execute_async_v3(self.stream.cuda_stream)
            if not ok:
                raise RuntimeError("execute_async_v3 returned False during capture")
        except RuntimeError as exc:
            warnings.warn(f"CUDA graph capture of {graph} failed ({exc}); running it without",
                          RuntimeWarning, stacklevel=3)
            self.stream.synchronize()
            self.cuda_graphs = False
            return result
        self._captured[graph] = _Captured(shapes, static_inputs, output, cuda_graph)
        return result

    def from_numpy(self, frames: np.ndarray):
        torch = self._torch
        with torch.cuda.stream(self.stream):
            return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(
                self.device)

    def to_numpy(self, array) -> np.ndarray:
        with self._torch.cuda.stream(self.stream):
            return array.float().cpu().numpy()  # waits for the stream's work on ``array``

    def zeros(self, kind: str, batch: int, height: int, width: int):
        torch = self._torch
        feature = self.manifest["graphs"]["encode"]["outputs"][0]["dtype"]
        channels, dtype = (2, "float32") if kind == "flow" else (self.mid_channels, feature)
        with torch.cuda.stream(self.stream):
            return torch.zeros(batch, channels, height, width, dtype=self._dtypes[dtype],
                               device=self.device)

    def concat(self, arrays: Sequence):
        with self._torch.cuda.stream(self.stream):
            return self._torch.cat(list(arrays), dim=0)

    def split(self, array) -> list:
        return list(array.split(1, dim=0))

    def _close_impl(self) -> None:
        # captured graphs and contexts before the engines they run, as TensorRT requires
        self._captured.clear()
        self.contexts = {}
        self.engines = {}
        self._activations = None
        self._torch.cuda.empty_cache()

    def describe(self) -> str:
        m = self.manifest
        shared = 0 if self._activations is None else self._activations.numel() / 2**20
        return (f"tensorrt {self._trt.__version__} on {m['gpu']['name']} ({m['precision']}, "
                f"dcn={m['dcn']}, CUDA graphs {'on' if self.cuda_graphs else 'off'}, "
                f"{shared:.0f} MiB of activations shared by {len(self.contexts)} engines)")
