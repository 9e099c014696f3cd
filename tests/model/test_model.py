"""Model structure, input checks and small-clip behaviour."""

import json

import pytest
import torch
from support import BATCH_CLIP_ATOL, FLOW_ATOL, REFERENCE, needs_shared

from hirn.core.errors import InputError
from hirn.core.schedule import FlowRef
from hirn.train import HiRN

PUBLISHED_PARAMS = 7_513_855


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HiRN().eval()


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS


@needs_shared(REFERENCE / "hirn_state_dict_keys.json")
def test_state_dict_matches_manifest_in_order(model):
    manifest = json.loads((REFERENCE / "hirn_state_dict_keys.json").read_text())
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape in manifest["state_dict"]]
    assert manifest["num_params"] == PUBLISHED_PARAMS


def test_step_modules_add_no_parameters(model):
    _ = model.steps
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS
    assert not any(k.startswith("steps") or "_steps" in k for k in model.state_dict())


def test_fp16_step_modules_keep_the_flow_graphs_in_fp32():
    torch.manual_seed(0)
    tiny = HiRN(mid_channels=16, num_blocks=1).eval()
    fp32, fp16 = tiny.step_modules("fp32"), tiny.step_modules("fp16")
    assert fp32.keys() == fp16.keys() and fp32["encode"] is tiny.steps.encode

    def dtype(module):
        return next(module.parameters()).dtype

    assert {name for name, m in fp16.items() if any(True for _ in m.parameters())
            and dtype(m) == torch.float32} == {"flow"}  # compose has no parameters
    assert fp16["compose"] is fp32["compose"] and fp16["flow"] is fp32["flow"]
    assert dtype(fp16["decode"]) == torch.float16 and dtype(fp16["step_group"]) == torch.float16
    assert all(p.dtype == torch.float32 for p in tiny.parameters())  # the model is untouched
    # the half copy's wrappers hold its own (half) submodules, not the model's
    assert fp16["encode"].feat_extract is not tiny.feat_extract
    bf16 = tiny.step_modules("bf16")  # the same split, in bfloat16 (CPUs)
    assert dtype(bf16["step_group"]) == torch.bfloat16 and bf16["flow"] is fp32["flow"]
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        tiny.step_modules("int8")


@pytest.mark.parametrize("bad, message", [
    (torch.rand(1, 3, 64, 64), "5 dims"),
    (torch.rand(1, 2, 4, 64, 64), "3 RGB channels"),
    (torch.rand(1, 2, 1, 64, 64), "3 RGB channels"),
    (torch.rand(1, 2, 3, 64, 65), "even"),
    (torch.rand(1, 2, 3, 63, 64), "even"),
    (torch.rand(1, 2, 3, 62, 64), "at least 64"),
    (torch.randint(0, 255, (1, 2, 3, 64, 64), dtype=torch.uint8), "floating-point"),
    (torch.full((1, 2, 3, 64, 64), float("nan")), "NaN or Inf"),
    (torch.full((1, 2, 3, 64, 64), float("inf")), "NaN or Inf"),
    (torch.rand(1, 0, 3, 64, 64), "empty"),
])
def test_bad_input_is_a_clear_value_error(model, bad, message):
    with pytest.raises(ValueError, match=message) as info:
        model(bad)
    assert isinstance(info.value, InputError)


def test_single_frame_clip(model):
    lq = torch.rand(1, 1, 3, 64, 64)
    with torch.no_grad():
        out = model(lq)
    assert out.shape == (1, 1, 3, 256, 256)
    assert torch.isfinite(out).all()


def test_non_square_batch_of_two(model):
    lq = torch.rand(2, 2, 3, 64, 96)
    with torch.no_grad():
        out = model(lq)
        single = model(lq[1:])
    assert out.shape == (2, 2, 3, 256, 384)
    # Clips in a batch do not influence each other.
    assert torch.allclose(out[1:], single, atol=BATCH_CLIP_ATOL)


def test_mirrored_clip_reuses_backward_flows(model):
    half = torch.rand(1, 2, 3, 64, 64)
    clip = torch.cat([half, half.flip(1)], dim=1)  # frames a b b a
    with torch.no_grad():
        flows = model.compute_flows(clip)
        direct = model.steps.flow(clip[:, 1], clip[:, 0])  # ff[0] computed, not reused
    assert torch.equal(flows[FlowRef("forward", 0)], flows[FlowRef("backward", 2)])
    assert (flows[FlowRef("forward", 0)] - direct).abs().max() <= FLOW_ATOL
