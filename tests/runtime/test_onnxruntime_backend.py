"""The onnxruntime backend: the factory picks the runner by device; shapes, dtypes and
batchability come from the folder's manifest; options it lacks are refused."""

import numpy as np
import onnxruntime
import pytest
import torch
from support import ONNX_GRAPH_ATOL

from hirn.core.errors import BackendError
from hirn.export.onnx_export import export_onnx
from hirn.runtime.backends import BackendConfig, create_runner
from hirn.runtime.backends.onnxruntime_backend import (
    OnnxRuntimeCudaRunner,
    OnnxRuntimeRunner,
    bound_sizes,
    concrete_shape,
)
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.memory import window_bytes


@pytest.fixture(scope="module")
def folder(tmp_path_factory, small_model):
    folder = tmp_path_factory.mktemp("ort") / "graphs"
    export_onnx(None, folder, model=small_model)
    return folder


@pytest.fixture(scope="module")
def runner(folder):
    return create_runner(BackendConfig(backend="onnxruntime", onnx_dir=folder, threads=1))


def test_manifest_shapes_are_bound_by_the_inputs():
    decode_inputs = [{"shape": ["batch", 3, "height", "width"]},
                     {"shape": ["batch", 16, "height", "width"]}]
    sizes = bound_sizes(decode_inputs, [np.zeros((2, 3, 64, 80)), np.zeros((2, 16, 64, 80))])
    assert sizes == {"batch": 2, "height": 64, "width": 80}
    assert concrete_shape(["batch", 3, "height*4", "width*4"], sizes) == (2, 3, 256, 320)


def test_the_cpu_runner_describes_itself_from_the_manifest(runner):
    assert isinstance(runner, OnnxRuntimeRunner)
    assert (runner.device, runner.element_size, runner.mid_channels) == ("cpu", 4, 16)
    assert runner.batchable["decode"] and not runner.batchable["step_forward"]
    feature, flow = runner.zeros("feature", 2, 64, 80), runner.zeros("flow", 1, 64, 80)
    assert (feature.shape, feature.dtype) == ((2, 16, 64, 80), np.float32)
    assert (flow.shape, flow.dtype) == ((1, 2, 64, 80), np.float32)
    with pytest.raises(ValueError, match="takes one frame at a time"):
        runner.run("step_backward_first", feature)


def test_memory_bound_reads_the_runner_s_attributes(runner, small_model):
    expected = window_bytes(TorchRunner(small_model), 16, 64, 80, 2)
    assert window_bytes(runner, 16, 64, 80, 2) == expected


def test_graph_outputs_equal_the_torch_runner_s(runner, small_model):
    frames = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    expected = TorchRunner(small_model).run("encode", torch.from_numpy(frames)).numpy()
    out = runner.run("encode", runner.from_numpy(frames))
    assert out.shape == expected.shape and np.abs(out - expected).max() <= ONNX_GRAPH_ATOL


@pytest.mark.parametrize("options, message", [
    ({"compile_steps": True}, "--compile applies to the torch backend only"),
    ({"cuda_graphs": True}, "--cuda-graphs applies to the torch and tensorrt backends"),
    ({"precision": "fp16"}, "holds fp32 graphs, not fp16"),
])
def test_options_the_backend_lacks_are_refused(folder, options, message):
    with pytest.raises(BackendError, match=message):
        create_runner(BackendConfig(backend="onnxruntime", onnx_dir=folder, **options))


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
def test_a_cuda_device_picks_the_cuda_runner_which_names_the_missing_provider(folder):
    with pytest.raises(BackendError, match="requested provider CUDAExecutionProvider"):
        create_runner(BackendConfig(backend="onnxruntime", onnx_dir=folder, device="cuda:0"))
    with pytest.raises(BackendError, match="requested provider CUDAExecutionProvider"):
        OnnxRuntimeCudaRunner(folder)
