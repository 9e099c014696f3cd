"""The torch backend's options: FP16 on CUDA, torch.compile and CUDA graphs."""

import numpy as np
import pytest
import torch
from support import (
    CALENDAR_LR,
    COMPILED_ATOL,
    COMPILED_MIN_PSNR_DB,
    FP16_MIN_PSNR_DB,
    REFERENCE_WEIGHTS,
    calendar_crop,
    needs_shared,
    psnr,
)

from hirn.core.errors import BackendError
from hirn.runtime.backends import BackendConfig, create_runner
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import HiRN, load_model, save_checkpoint


def _tiny_model(seed: int = 5) -> HiRN:
    torch.manual_seed(seed)
    return HiRN(mid_channels=16, num_blocks=1).eval()


def _calendar_crop(frames: int = 8) -> np.ndarray:
    """The first LR calendar frames, a 64x96 crop, ``[T, 3, H, W]`` float32."""
    return calendar_crop(frames, top=40, left=40, height=64, width=96)


def test_compiled_step_module_equals_the_eager_one():
    """Compiling a whole clip takes ~8 minutes on 2 cores, so the CPU check compiles the
    cheapest graphs through the runner; the whole clip is the GPU test below."""
    model = _tiny_model()
    eager, compiled = TorchRunner(model), TorchRunner(model, compile_steps=True)
    frames = torch.rand(2, 3, 64, 64)
    flows = torch.randn(2, 2, 64, 64), torch.randn(2, 2, 64, 64)
    for graph, inputs in (("encode", (frames,)), ("compose", flows)):
        expected = eager.run(graph, *inputs)
        out = compiled.run(graph, *inputs)
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() <= COMPILED_ATOL, graph
    assert "compiled" in compiled.describe() and "compiled" not in eager.describe()


def test_cuda_graphs_on_the_cpu_is_a_clear_error():
    with pytest.raises(BackendError, match="CUDA graphs need --device cuda"):
        TorchRunner(_tiny_model(), cuda_graphs=True)


def test_no_weights_is_refused_by_the_factory():
    """Only the CLI fills in the default weights (infer_backend); the API asks for them."""
    with pytest.raises(BackendError, match="no weights given: pass --checkpoint"):
        create_runner(BackendConfig(backend="torch"))


def test_checkpoint_of_any_size_runs_through_the_factory(tmp_path):
    model = _tiny_model()
    save_checkpoint(tmp_path / "tiny.pth", model)
    runner = create_runner(BackendConfig(backend="torch", checkpoint=tmp_path / "tiny.pth"))
    assert runner.mid_channels == 16
    frames = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.steps.encode(frames)
    assert torch.equal(runner.run("encode", frames), expected)
    with pytest.raises(ValueError, match="takes one frame at a time"):
        runner.run("step_backward_first", torch.zeros(2, 16, 64, 64))


def test_config_carries_the_options_to_the_runner(tmp_path):
    save_checkpoint(tmp_path / "tiny.pth", _tiny_model())
    runner = create_runner(BackendConfig(backend="torch", compile_steps=True,
                                         checkpoint=tmp_path / "tiny.pth"))
    assert isinstance(runner, TorchRunner) and runner.compiled and not runner.cuda_graphs
    assert (runner.device, runner.element_size, runner.mid_channels) == ("cpu", 4, 16)
    # six propagation steps share one forward: the per-function limit must leave room
    config = torch._dynamo.config
    assert getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 0)) >= 64


@pytest.mark.gpu
@needs_shared(REFERENCE_WEIGHTS)
@needs_shared(CALENDAR_LR)
def test_fp16_runner_on_cuda_keeps_close_to_fp32(exact_fp32):
    """FP16 features with FP32 flows: real frames, reference weights, against FP32 on CUDA."""
    model = load_model(REFERENCE_WEIGHTS)
    clip = _calendar_crop()
    fp32 = upscale_clip(TorchRunner(model, device="cuda"), clip)
    fp16 = upscale_clip(TorchRunner(model, device="cuda", precision="fp16"), clip)
    assert fp16.dtype == np.float32 and fp16.shape == fp32.shape
    db = psnr(np.clip(fp16, 0, 1), np.clip(fp32, 0, 1))
    print(f"torch runner FP16 vs FP32 on CUDA, calendar crop: {db:.1f} dB")
    assert db >= FP16_MIN_PSNR_DB


@pytest.mark.gpu
@needs_shared(REFERENCE_WEIGHTS)
@needs_shared(CALENDAR_LR)
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["compiled", "cuda-graphs"])
def test_compiled_runner_on_cuda_matches_eager(cuda_graphs, exact_fp32):
    """Whole clip, twice (the second run replays what the first compiled or captured)."""
    model = load_model(REFERENCE_WEIGHTS)
    clip = _calendar_crop()
    expected = upscale_clip(TorchRunner(model, device="cuda"), clip)
    runner = TorchRunner(model, device="cuda", compile_steps=True, cuda_graphs=cuda_graphs)
    for attempt in range(2):
        out = upscale_clip(runner, clip)
        db = psnr(np.clip(out, 0, 1), np.clip(expected, 0, 1))
        print(f"compiled runner (CUDA graphs {cuda_graphs}) vs eager, run {attempt}: {db:.1f} dB")
        assert db >= COMPILED_MIN_PSNR_DB
