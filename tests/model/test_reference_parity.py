"""The model reproduces the original implementation's outputs and flows."""

import numpy as np
import pytest
import torch
from support import (
    FLOW_ATOL,
    FP16_MIN_PSNR_DB,
    MODEL_ATOL,
    REFERENCE,
    REFERENCE_WEIGHTS,
    needs_shared,
    psnr,
)

from hirn.core.schedule import FlowRef
from hirn.train import load_model

CASES = ["hirn_t6_64x64", "hirn_t17_64x64"]
pytestmark = needs_shared(REFERENCE_WEIGHTS)


@pytest.fixture(scope="module")
def model():
    return load_model(REFERENCE_WEIGHTS)


def _stacked(flows, kind, num):
    return torch.stack([flows[FlowRef(kind, i)] for i in range(num)], dim=1)


def _check_case(model, case, device):
    ref = np.load(REFERENCE / f"{case}.npz")
    lq = torch.from_numpy(ref["lq"]).to(device)
    t = lq.shape[1]
    with torch.no_grad():
        flows = model.compute_flows(lq)
        out = model(lq)
    fb = _stacked(flows, "backward", t - 1).cpu()
    ff = _stacked(flows, "forward", t - 1).cpu()
    assert out.shape == (1, t, 3, 4 * lq.shape[3], 4 * lq.shape[4])
    assert (fb - torch.from_numpy(ref["flows_backward"])).abs().max() <= FLOW_ATOL
    assert (ff - torch.from_numpy(ref["flows_forward"])).abs().max() <= FLOW_ATOL
    assert (out.cpu() - torch.from_numpy(ref["out"])).abs().max() <= MODEL_ATOL


@pytest.mark.parametrize("case", CASES)
def test_cpu_float32_matches_original(model, case):
    _check_case(model, case, "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_cuda_float32_matches_original(case, exact_fp32):
    _check_case(load_model(REFERENCE_WEIGHTS, map_location="cuda"), case, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_cuda_fp16_autocast_close_to_fp32(case):
    model = load_model(REFERENCE_WEIGHTS, map_location="cuda")
    lq = torch.from_numpy(np.load(REFERENCE / f"{case}.npz")["lq"]).cuda()
    with torch.no_grad():
        fp32 = model(lq)
        with torch.autocast("cuda", dtype=torch.float16):
            fp16 = model(lq)
    db = psnr(fp16.float().clamp(0, 1), fp32.clamp(0, 1))
    print(f"{case}: FP16 autocast vs FP32 PSNR {db:.2f} dB")
    assert db >= FP16_MIN_PSNR_DB
