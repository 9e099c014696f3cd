"""Checkpoint formats, clear mismatch errors, saving, and SpyNet initialisation."""

import pytest
import torch
from support import REFERENCE_WEIGHTS, WEIGHTS, needs_shared

from hirn.core.errors import CheckpointError
from hirn.train import HiRN, load_model, load_spynet, save_checkpoint

SPYNET = WEIGHTS / "spynet_sintel_final.pth"


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(1)
    return HiRN().state_dict()


def _same(model, state):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@needs_shared(REFERENCE_WEIGHTS)
def test_reference_weights_load_strict_in_eval_mode():
    model = load_model(REFERENCE_WEIGHTS)
    published = torch.load(REFERENCE_WEIGHTS, map_location="cpu", weights_only=True)["params"]
    assert not model.training
    assert _same(model, published)


@pytest.mark.parametrize("layout", ["params", "params_ema", "bare", "module_prefix"])
def test_accepted_layouts(tmp_path, state, layout):
    payload = {
        "params": {"params": state},
        "params_ema": {"params_ema": state},
        "bare": state,
        "module_prefix": {"params": {f"module.{k}": v for k, v in state.items()}},
    }[layout]
    torch.save(payload, tmp_path / "ckpt.pth")
    assert _same(load_model(tmp_path / "ckpt.pth"), state)


def test_param_key_chooses_between_params_and_ema(tmp_path, state):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"params": state, "params_ema": ema}, tmp_path / "both.pth")
    assert _same(load_model(tmp_path / "both.pth"), state)
    assert _same(load_model(tmp_path / "both.pth", param_key="params_ema"), ema)
    torch.save({"params": state}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="no 'params_ema' entry"):
        load_model(tmp_path / "plain.pth", param_key="params_ema")


def test_renamed_key_lists_missing_and_unexpected(tmp_path, state):
    broken = dict(state)
    broken["conv_last.weightt"] = broken.pop("conv_last.weight")
    torch.save({"params": broken}, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "renamed.pth")
    message = str(info.value)
    assert "1 missing keys" in message and '"conv_last.weight"' in message
    assert "1 unexpected keys" in message and '"conv_last.weightt"' in message
    assert "renamed.pth" in message


def test_reshaped_key_names_both_shapes(tmp_path, state):
    broken = dict(state)
    broken["upconv1.bias"] = torch.zeros(255)
    torch.save({"params": broken}, tmp_path / "reshaped.pth")
    with pytest.raises(CheckpointError, match=r"upconv1.bias: \[255\] vs model \[256\]"):
        load_model(tmp_path / "reshaped.pth")


@pytest.mark.parametrize("size", [{"mid_channels": 16, "num_blocks": 2},
                                  {"mid_channels": 8, "num_blocks": 0}])
def test_the_model_size_is_read_from_the_weights(tmp_path, size):
    torch.manual_seed(2)
    state = HiRN(**size).state_dict()
    torch.save({"params": state}, tmp_path / "small.pth")
    model = load_model(tmp_path / "small.pth")
    assert (model.mid_channels, model.num_blocks) == (size["mid_channels"], size["num_blocks"])
    assert _same(model, state)


def test_explicit_size_wins_and_a_mismatch_reports_counts_and_config(tmp_path):
    torch.save({"params": HiRN(num_blocks=2).state_dict()}, tmp_path / "small.pth")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "small.pth", num_blocks=7)
    assert "missing keys" in str(info.value) and "and " in str(info.value)
    assert "num_blocks=7" in str(info.value)
    assert load_model(tmp_path / "small.pth").num_blocks == 2


def test_model_entry_is_checked_against_the_weights_and_other_entries_ignored(tmp_path):
    torch.manual_seed(2)
    state = HiRN(mid_channels=16, num_blocks=1).state_dict()
    provenance = {"config": "tiny.yml", "iteration": 3}
    torch.save({"params": state, "params_ema": state, "provenance": provenance,
                "model": {"mid_channels": 16, "num_blocks": 1}}, tmp_path / "trained.pth")
    model = load_model(tmp_path / "trained.pth", param_key="params_ema")
    assert (model.mid_channels, model.num_blocks) == (16, 1) and _same(model, state)
    torch.save({"params": state, "model": {"mid_channels": 32, "num_blocks": 1}},
               tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=r"mid_channels=32 \(weights: 16\).*disagree"):
        load_model(tmp_path / "edited.pth")
    torch.save({"params": state, "model": [16, 1]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="'model'.* is a list, not a dict"):
        load_model(tmp_path / "odd.pth")


def test_non_strict_load_accepts_missing_keys(tmp_path, state):
    partial = {k: v for k, v in state.items() if not k.startswith("conv_last")}
    torch.save({"params": partial}, tmp_path / "partial.pth")
    assert _same(load_model(tmp_path / "partial.pth", strict=False), partial)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_unreadable_file_is_a_clear_error(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "bad.pth")


def test_missing_file_and_wrong_payload(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pth")
    torch.save({"optimizer": {"lr": 1}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither 'params' nor 'params_ema'"):
        load_model(tmp_path / "other.pth")


def test_save_writes_published_format_and_round_trips(tmp_path, state):
    model = HiRN()
    model.load_state_dict(state)
    path = save_checkpoint(tmp_path / "sub" / "out.pth", model, params_ema=state)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"params", "params_ema"}
    assert list(raw["params"]) == list(state)
    assert _same(load_model(path), state)
    assert [p.name for p in path.parent.iterdir()] == ["out.pth"]  # no temporary left


def test_save_records_model_and_provenance_as_plain_values(tmp_path, state):
    provenance = {"config": "tiny", "iteration": 7, "data_roots": {"train_gt": "/data/gt",
                                                                   "train_lq": None},
                  "hirn_version": "0.1.0", "date": "2026-01-01T00:00:00+00:00"}
    path = save_checkpoint(tmp_path / "out.pth", state, state,
                           model={"mid_channels": 64, "num_blocks": 7}, provenance=provenance)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain values only
    assert raw["model"] == {"mid_channels": 64, "num_blocks": 7}  # the published size
    assert raw["provenance"] == provenance
    assert list(raw["params"]) == list(state) and _same(load_model(path), state)
    with pytest.raises(TypeError, match=r"provenance.data_roots.train_gt is a PosixPath"):
        save_checkpoint(tmp_path / "bad.pth", state,
                        provenance={"data_roots": {"train_gt": tmp_path}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth"]  # nothing half-written


@needs_shared(SPYNET)
def test_spynet_initialisation_from_sintel_weights():
    model = HiRN()
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("spynet")}
    load_spynet(model, SPYNET)
    weights = torch.load(SPYNET, map_location="cpu", weights_only=True)["params"]
    spynet_state = model.spynet.state_dict()
    assert all(torch.equal(spynet_state[k], v) for k, v in weights.items())
    assert torch.equal(spynet_state["mean"], torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_spynet_initialisation_rejects_other_weights(tmp_path, state):
    torch.save({"params": state}, tmp_path / "hirn.pth")
    with pytest.raises(CheckpointError, match="does not fit SpyNet"):
        load_spynet(HiRN(), tmp_path / "hirn.pth")
