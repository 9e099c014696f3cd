"""The tensorrt backend: folder checks and clear errors on the CPU; clips on a GPU (trt mark)."""

import contextlib
import ctypes
import dataclasses
import hashlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from support import CUDA_GRAPH_ATOL, TRT_FP16_MIN_PSNR_DB, TRT_FP32_CLIP_ATOL, psnr

from hirn.core.errors import BackendError, EngineFolderError, ProfileError
from hirn.core.graphs import graph_specs
from hirn.export.engine import (
    EngineOptions,
    build_engines,
    engine_entry,
    engines_manifest,
    plan_graphs,
    resolve_options,
)
from hirn.export.engine_cache import write_engines_manifest
from hirn.export.onnx_export import ExportOptions, _describe, export_onnx
from hirn.runtime.backends import BackendConfig, Runner, create_runner
from hirn.runtime.backends import tensorrt_backend as backend
from hirn.runtime.backends.tensorrt_backend import (
    TENSOR_ALIGNMENT,
    TensorRTRunner,
    aligned,
    check_engine_folder,
    cuda_device,
    empty_aligned,
)
from hirn.runtime.driver import upscale_clip
from hirn.train import HiRN

GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
OPTIONS = EngineOptions((64, 64), (64, 64), (96, 128), max_batch=2)


def _fake_engine_folder(folder: Path, graphs: list[str] | None = None) -> Path:
    """An engine folder as hirn-export engine writes it, with made-up engines (CPU tests)."""
    entries = {}
    for spec in graph_specs(16):
        if graphs is None or spec.name in graphs:
            entry = _describe(spec, "fp16")
            entry.update(sha256=hashlib.sha256(spec.name.encode()).hexdigest(), bytes=1)
            entries[spec.name] = entry
    onnx_manifest = {"model": {"mid_channels": 16, "min_size": 64, "size_multiple": 2},
                     "precision": "fp16", "dcn": "onnx", "opset": 19, "checkpoint": None,
                     "graphs": entries}
    options = resolve_options(OPTIONS, onnx_manifest)
    folder.mkdir(parents=True)
    done = {}
    for name, planned in plan_graphs(onnx_manifest, options, "10.13.0", GPU, None).items():
        (folder / planned["file"]).write_bytes(b"not an engine " + name.encode())
        done[name] = engine_entry(entries[name], planned, folder, 0)
    write_engines_manifest(folder, engines_manifest(folder, onnx_manifest, options, "10.13.0",
                                                    GPU, None, done))
    return folder


def test_factory_needs_an_engine_folder(tmp_path):
    with pytest.raises(BackendError, match="needs --engines DIR"):
        create_runner(BackendConfig(backend="tensorrt"))
    with pytest.raises(EngineFolderError, match="engine folder not found"):
        create_runner(BackendConfig(backend="tensorrt", engines_dir=tmp_path / "none"))


def test_engine_folder_checks(tmp_path):
    folder = _fake_engine_folder(tmp_path / "all")
    manifest = check_engine_folder(folder, batch_size=2)
    assert len(manifest["graphs"]) == 10 and manifest["profile"]["max_batch"] == 2
    with pytest.raises(BackendError, match="exceeds the engines' --max-batch 2"):
        create_runner(BackendConfig(backend="tensorrt", engines_dir=folder, batch_size=4))
    partial = _fake_engine_folder(tmp_path / "partial", ["encode", "flow"])
    with pytest.raises(EngineFolderError, match="lacks the engines"):
        check_engine_folder(partial)
    engine = next(folder.glob("decode-*.engine"))
    engine.write_bytes(b"changed")
    with pytest.raises(EngineFolderError, match="truncated or replaced"):
        check_engine_folder(folder)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="checks the message shown where TensorRT is absent")
def test_without_tensorrt_the_error_says_what_to_install(tmp_path):
    folder = _fake_engine_folder(tmp_path / "engines")
    with pytest.raises(BackendError, match="needs TensorRT: pip install tensorrt"):
        create_runner(BackendConfig(backend="tensorrt", engines_dir=folder, batch_size=2))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_cuda_the_error_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    folder = _fake_engine_folder(tmp_path / "engines")
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        TensorRTRunner(folder)


def _clip(frames=3, height=64, width=96, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((frames, 3, height, width), dtype=np.float32)


class _StandInContext:
    """Stands in for a TensorRT execution context on CPU tensors: it reads its inputs and
    writes its output through the addresses bound to it, as an engine would. Its output is
    sum_i (i + 1) * mean(input_i), so that inputs bound in the wrong order show."""

    def __init__(self, entry: dict):
        self.entry, self.shapes, self.addresses, self.runs = entry, {}, {}, 0
        self.bound = []  # every (name, address) ever bound

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        self.bound.append((name, address))
        return True

    def get_tensor_shape(self, name):
        out = self.entry["outputs"][0]
        batch, _, height, width = self.shapes[self.entry["inputs"][0]["name"]]
        scale = 4 if out["kind"] == "output" else 1
        return (batch, out["shape"][1], height * scale, width * scale)

    def _array(self, spec, shape):
        ctype = ctypes.c_uint16 if spec["dtype"] == "float16" else ctypes.c_float
        pointer = ctypes.cast(self.addresses[spec["name"]], ctypes.POINTER(ctype))
        return np.ctypeslib.as_array(pointer, shape).view(spec["dtype"])

    def execute_async_v3(self, stream):
        value = sum((i + 1) * float(self._array(t, self.shapes[t["name"]]).mean())
                    for i, t in enumerate(self.entry["inputs"]))
        out = self.entry["outputs"][0]
        self._array(out, self.get_tensor_shape(out["name"]))[...] = value
        self.runs += 1
        return True


def _stand_in_runner(folder: Path, monkeypatch) -> TensorRTRunner:
    """A runner on CPU tensors whose execution contexts are stand-ins (no TensorRT, no GPU)."""
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    runner = TensorRTRunner.__new__(TensorRTRunner)
    manifest = check_engine_folder(folder)
    Runner.__init__(runner, {n: [t["name"] for t in g["inputs"]]
                             for n, g in manifest["graphs"].items()}, 16)
    runner.folder, runner.manifest, runner.cuda_graphs, runner._captured = folder, manifest, \
        False, {}
    runner._torch, runner._trt = torch, types.SimpleNamespace(__version__="10.13.0")
    # The CPU stands in for the GPU here; test_device_keeps_its_index covers the real device.
    runner.device, runner.stream = torch.device("cpu"), types.SimpleNamespace(cuda_stream=0)
    runner._dtypes = {"float32": torch.float32, "float16": torch.float16}
    runner.contexts = {n: _StandInContext(g) for n, g in manifest["graphs"].items()}
    return runner


def test_runner_binds_and_runs_engines_by_address(tmp_path, monkeypatch):
    """The backend's Python around TensorRT, on the CPU: bindings by name and address, output
    allocation from the context's shape, dtype and profile checks, and a whole clip through
    the driver, with stand-in execution contexts (TensorRT itself is not involved)."""
    runner = _stand_in_runner(_fake_engine_folder(tmp_path / "engines"), monkeypatch)

    a, b = torch.rand(1, 2, 64, 96), torch.rand(1, 2, 64, 96)
    out = runner.run("compose", a, b)
    assert out.shape == (1, 2, 64, 96) and out.dtype == torch.float32
    assert torch.allclose(out, a.mean() + 2 * b.mean())
    feature = runner.zeros("feature", 1, 64, 96)
    assert feature.dtype == torch.float16  # FP16 engines: features in FP16
    with pytest.raises(TypeError, match="current must be float16"):
        runner.run("step_backward_first", feature.float())
    frames = _clip()
    hr = upscale_clip(runner, frames, batch_size=2)
    assert hr.shape == (3, 3, 256, 384) and np.isfinite(hr).all()
    runs = {name: c.runs for name, c in runner.contexts.items()}
    assert runs["decode"] == 2 and runs["step_group"] == 2 and runs["step_group_first"] == 1
    with pytest.raises(ProfileError, match="outside the engines' profile"):
        runner.run("encode", torch.from_numpy(_clip(frames=3, height=64, width=96)))


def test_every_bound_address_is_256_byte_aligned(tmp_path, monkeypatch):
    """setTensorAddress needs 256-byte aligned pointers (NvInferRuntime.h). At LR 66x98 the
    batch-1 views that split() returns start 51,744 bytes (flows, FP32) or 206,976 bytes
    (features, FP16) apart, so every other one is misaligned: the runner must copy those."""
    runner = _stand_in_runner(_fake_engine_folder(tmp_path / "engines"), monkeypatch)
    flows = runner.split(torch.rand(3, 2, 66, 98))
    assert any(f.data_ptr() % TENSOR_ALIGNMENT for f in flows)  # the case this test is about
    hr = upscale_clip(runner, _clip(frames=3, height=66, width=98), batch_size=2)
    assert hr.shape == (3, 3, 264, 392) and np.isfinite(hr).all()
    bound = [(graph, name, address) for graph, context in runner.contexts.items()
             for name, address in context.bound]
    assert {graph for graph, _, _ in bound} == set(runner.contexts)
    misaligned = [b for b in bound if b[2] % TENSOR_ALIGNMENT]
    assert not misaligned, f"{len(misaligned)} of {len(bound)} bindings misaligned, e.g. " \
        f"{misaligned[:3]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 2, 66, 98), (1, 16, 67, 99), (3,), (0, 4)])
def test_aligned_copies_only_what_it_must(dtype, shape):
    batch = torch.rand((2, *shape), dtype=torch.float32).to(dtype)
    for view in batch.unbind(0):
        out = aligned(view)
        assert out.data_ptr() % TENSOR_ALIGNMENT == 0 and out.is_contiguous()
        assert out.dtype == dtype and out.shape == view.shape and torch.equal(out, view)
        if view.data_ptr() % TENSOR_ALIGNMENT == 0:
            assert out.data_ptr() == view.data_ptr()  # already bindable: no copy
    buffer = empty_aligned((1000,), torch.uint8, "cpu", alignment=512)
    assert buffer.data_ptr() % 512 == 0 and buffer.shape == (1000,)


def test_cuda_device_has_its_index():
    """Tensors on a GPU report cuda:N, which torch.device("cuda") never equals: the runner
    compares inputs with its device, so that device must carry its index."""
    assert torch.device("cuda") != torch.device("cuda", 0)  # the trap
    assert cuda_device("cuda", lambda: 0) == torch.device("cuda", 0)
    assert cuda_device("cuda", lambda: 2) == torch.device("cuda:2")
    assert cuda_device("cuda:1", lambda: 0) == torch.device("cuda", 1)
    with pytest.raises(BackendError, match="runs on CUDA devices, not 'cpu'"):
        cuda_device("cpu", lambda: 0)


@pytest.mark.gpu
def test_on_a_gpu_tensors_match_the_device_and_bound_copies_are_aligned():
    """The two rules above with real CUDA tensors (no TensorRT needed)."""
    device = cuda_device("cuda", torch.cuda.current_device)
    batch = torch.rand(3, 2, 66, 98, device="cuda")
    assert batch.device == device and torch.zeros(1, device="cuda").device == device
    views = batch.split(1)
    assert any(v.data_ptr() % TENSOR_ALIGNMENT for v in views)
    for view in views:
        out = aligned(view)
        assert out.device == device and out.data_ptr() % TENSOR_ALIGNMENT == 0
        assert torch.equal(out, view)
    assert empty_aligned((1000,), torch.uint8, device, 512).data_ptr() % 512 == 0


class _StandInEngine:
    """A deserialised engine as the runner uses it: its IO tensors and activation size."""

    def __init__(self, entry: dict, memory: int):
        self.io = [(t["name"], True, t["dtype"]) for t in entry["inputs"]]
        self.io += [(t["name"], False, t["dtype"]) for t in entry["outputs"]]
        self.num_io_tensors, self.device_memory_size_v2 = len(self.io), memory
        self.entry, self.contexts = entry, []

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return "input" if next(io for io in self.io if io[0] == name)[1] else "output"

    def get_tensor_dtype(self, name):
        return next(io for io in self.io if io[0] == name)[2]

    def create_execution_context(self, strategy="static"):
        context = _StandInContext(self.entry)
        context.strategy, context.memory = strategy, None
        context.set_device_memory = lambda address, size: setattr(context, "memory",
                                                                   (address, size))
        self.contexts.append(context)
        return context


def _stand_in_runtime_tensorrt(folder: Path, sizes: dict) -> types.ModuleType:
    """A stand-in ``tensorrt`` module for TensorRTRunner.__init__: it deserialises each engine
    file of ``folder`` into a _StandInEngine with the activation size ``sizes[graph]``."""
    manifest = check_engine_folder(folder)
    by_file = {g["file"]: name for name, g in manifest["graphs"].items()}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = manifest["tensorrt"]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(
        STATIC="static", ON_PROFILE_CHANGE="on_profile_change", USER_MANAGED="user_managed")
    trt.nptype = np.dtype
    engines = {}

    def deserialize(data: bytes):
        name = next(n for f, n in by_file.items() if (folder / f).read_bytes() == bytes(data))
        engines[name] = _StandInEngine(manifest["graphs"][name], sizes[name])
        return engines[name]

    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=deserialize)
    trt.engines = engines
    return trt


def test_constructor_keeps_the_device_index_and_shares_activation_memory(tmp_path,
                                                                          monkeypatch):
    """TensorRTRunner.__init__ against stand-ins for TensorRT and CUDA (current device 1):
    the runner's device is cuda:1, what its tensors will report (a bare "cuda" made every
    run() fail), and the engines share one activation buffer of the largest engine's size
    instead of one each."""
    folder = _fake_engine_folder(tmp_path / "engines")
    sizes = {name: (i + 1) << 20 for i, name in enumerate(check_engine_folder(folder)["graphs"])}
    trt = _stand_in_runtime_tensorrt(folder, sizes)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(backend, "check_compatible", lambda manifest, version, gpu: None)
    monkeypatch.setattr(backend, "current_gpu", lambda index: GPU)
    allocations = []

    def on_the_cpu(shape, dtype, device, alignment=TENSOR_ALIGNMENT):
        allocations.append((tuple(shape), device))
        return empty_aligned(shape, dtype, "cpu", alignment)

    monkeypatch.setattr(backend, "empty_aligned", on_the_cpu)
    runner = create_runner(BackendConfig(backend="tensorrt", engines_dir=folder, batch_size=2))
    assert runner.device == torch.device("cuda:1") and runner.device.index == 1
    largest = max(sizes.values())
    assert allocations == [((largest,), torch.device("cuda:1"))]  # one buffer for all
    address = runner._activations.data_ptr()
    assert address % 512 == 0 and runner._activations.numel() == largest
    assert set(trt.engines) == set(runner.contexts) and len(sizes) == 10
    for name, engine in trt.engines.items():
        (context,) = engine.contexts
        assert runner.contexts[name] is context
        assert context.strategy == "user_managed" and context.memory == (address, largest)
    assert "10 MiB of activations shared by 10 engines" in runner.describe()


# ---- needs TensorRT and a GPU ---------------------------------------------------------------

@pytest.fixture(scope="module")
def fp32_folders(tmp_path_factory):
    """A small model's FP32 DeformConv graphs and their engines (TensorRT's own DCN)."""
    root = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    export_onnx(None, root / "onnx", ExportOptions(dcn="onnx"),
                model=HiRN(mid_channels=16, num_blocks=1))
    build_engines(root / "onnx", root / "engines", OPTIONS)
    return root


@pytest.mark.trt
def test_fp32_engines_match_onnxruntime_on_a_clip(fp32_folders):
    from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeRunner

    frames = _clip()
    expected = upscale_clip(OnnxRuntimeRunner(fp32_folders / "onnx"), frames, batch_size=2)
    runner = create_runner(BackendConfig(backend="tensorrt", engines_dir=fp32_folders / "engines",
                                         device="cuda", batch_size=2))
    out = upscale_clip(runner, frames, batch_size=2)
    assert np.abs(out - expected).max() <= TRT_FP32_CLIP_ATOL
    graphed = upscale_clip(TensorRTRunner(fp32_folders / "engines", cuda_graphs=True), frames,
                           batch_size=2)
    assert np.abs(graphed - out).max() <= CUDA_GRAPH_ATOL
    with pytest.raises(ProfileError, match="outside the engines' profile"):
        upscale_clip(runner, _clip(height=128, width=128), batch_size=2)


@pytest.mark.trt
@pytest.mark.skipif(not os.environ.get("HIRN_PLUGIN_LIB"),
                    reason="set HIRN_PLUGIN_LIB to a built libhirn_plugins.so (plugins/README.md)")
def test_fp16_plugin_engines_match_onnxruntime_fp32(tmp_path, fp32_folders):
    from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeRunner

    torch.manual_seed(0)
    export_onnx(None, tmp_path / "onnx", ExportOptions(dcn="plugin", precision="fp16"),
                model=HiRN(mid_channels=16, num_blocks=1))
    options = dataclasses.replace(OPTIONS, plugin_lib=Path(os.environ["HIRN_PLUGIN_LIB"]))
    manifest = build_engines(tmp_path / "onnx", tmp_path / "engines", options)
    assert manifest["dcn"] == "plugin" and manifest["precision"] == "fp16"
    frames = _clip()
    expected = upscale_clip(OnnxRuntimeRunner(fp32_folders / "onnx"), frames, batch_size=2)
    out = upscale_clip(TensorRTRunner(tmp_path / "engines", cuda_graphs=True), frames,
                       batch_size=2)
    assert psnr(out, expected, peak=float(expected.max() - expected.min())) >= \
        TRT_FP16_MIN_PSNR_DB


def test_a_closed_runner_lets_go_of_its_contexts(tmp_path, monkeypatch):
    runner = _stand_in_runner(_fake_engine_folder(tmp_path / "engines"), monkeypatch)
    a = torch.rand(1, 2, 64, 96)
    runner.run("compose", a, a)
    with runner:
        pass
    assert runner.closed and runner.contexts == {} and runner.engines == {}
    with pytest.raises(RuntimeError, match="runner was closed"):
        runner.run("compose", a, a)
