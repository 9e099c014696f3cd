"""The runtime driver: whole clips through each backend equal the model."""

import numpy as np
import pytest
import torch
from support import (
    CALENDAR_LR,
    MODEL_ATOL,
    ONNX_CLIP_ATOL,
    ONNX_MIN_PSNR_DB,
    REFERENCE,
    REFERENCE_WEIGHTS,
    calendar_crop,
    needs_shared,
    psnr,
)

from hirn.core.errors import BackendError, ModelFolderError
from hirn.runtime.backends import BackendConfig, create_runner
from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeCudaRunner, OnnxRuntimeRunner
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import is_mirror_extended, upscale_clip
from hirn.train import HiRN, load_model

pytestmark = needs_shared(REFERENCE_WEIGHTS)


@pytest.fixture(scope="module")
def model():
    return load_model(REFERENCE_WEIGHTS)


@pytest.fixture(scope="module")
def onnx_dir(reference_graphs):
    return reference_graphs("onnx")


@pytest.mark.parametrize("case", ["hirn_t6_64x64", "hirn_t17_64x64"])
def test_onnxruntime_clip_matches_original(onnx_dir, case):
    ref = np.load(REFERENCE / f"{case}.npz")
    out = upscale_clip(OnnxRuntimeRunner(onnx_dir), ref["lq"][0], batch_size=4)
    assert np.abs(out - ref["out"][0]).max() <= ONNX_CLIP_ATOL


def test_torch_backend_clip_matches_original(model):
    ref = np.load(REFERENCE / "hirn_t6_64x64.npz")
    out = upscale_clip(TorchRunner(model), ref["lq"][0], batch_size=3)
    assert np.abs(out - ref["out"][0]).max() <= MODEL_ATOL


@needs_shared(CALENDAR_LR)
def test_onnxruntime_on_real_frames_matches_pytorch(onnx_dir, model):
    """Calendar LR frames (a 64x64 crop of the first 8: GOP 7 with its uncomputed frame)."""
    clip = calendar_crop(8, top=40, left=60, height=64, width=64)
    with torch.no_grad():
        expected = model(torch.from_numpy(clip)[None])[0].numpy()
    out = upscale_clip(OnnxRuntimeRunner(onnx_dir), clip, batch_size=4)
    db = psnr(np.clip(out, 0, 1), np.clip(expected, 0, 1))
    print(f"calendar crop, onnxruntime vs PyTorch: {db:.1f} dB")
    assert db >= ONNX_MIN_PSNR_DB


def test_mirrored_clip_is_detected_and_gives_the_same_result():
    torch.manual_seed(3)
    model = HiRN(mid_channels=16, num_blocks=1).eval()
    half = torch.rand(2, 3, 64, 64)
    clip = torch.cat([half, half.flip(0)]).numpy()
    assert is_mirror_extended(clip) and not is_mirror_extended(clip[:3])
    with torch.no_grad():
        expected = model(torch.from_numpy(clip)[None])[0].numpy()
    out = upscale_clip(TorchRunner(model), clip)
    assert np.array_equal(out, expected)  # the same modules in the same order: exact


def test_decoding_only_the_kept_frames_gives_the_same_frames():
    """A window decodes only the frames it writes; its context frames still drive the rest."""
    torch.manual_seed(4)
    model = HiRN(mid_channels=16, num_blocks=1).eval()
    clip = torch.rand(7, 3, 64, 64).numpy()
    runner = TorchRunner(model)
    whole = upscale_clip(runner, clip, batch_size=3)
    assert np.array_equal(upscale_clip(runner, clip, batch_size=3, keep=slice(2, 5)), whole[2:5])
    assert upscale_clip(runner, clip, keep=slice(3, 3)).shape == (0, 3, 256, 256)


def test_backend_factory_and_clear_errors(onnx_dir, tmp_path):
    runner = create_runner(BackendConfig(backend="onnxruntime", onnx_dir=onnx_dir))
    assert "CPUExecutionProvider" in runner.describe()
    with pytest.raises(BackendError, match="needs --onnx DIR"):
        create_runner(BackendConfig(backend="onnxruntime"))
    with pytest.raises(BackendError, match="unknown backend"):
        create_runner(BackendConfig(backend="tflite"))
    with pytest.raises(BackendError, match=r"requested provider CUDAExecutionProvider"):
        OnnxRuntimeCudaRunner(onnx_dir)
    with pytest.raises(ModelFolderError, match="no manifest.json"):
        OnnxRuntimeRunner(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU"):
            TorchRunner(HiRN(mid_channels=16, num_blocks=1), device="cuda")
