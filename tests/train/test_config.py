"""hirn-train configuration: the shipped recipe parses; mistakes are reported clearly."""

import copy
import math
import warnings

import pytest
import yaml
from support import REPO

from hirn.core.errors import ConfigError
from hirn.train.config import load_config, parse_config, to_dict

RECIPE = REPO / "configs" / "reds_hirn_x4.yml"
CALENDAR = REPO / "configs" / "vid4_calendar_cpu.yml"

MINIMAL = {"datasets": {"train": {"dataroot_gt": "clips"}}}


def _with(path: str, value, base=None) -> dict:
    """A copy of ``base`` (default: the minimal config) with ``a.b.c = value``."""
    raw = copy.deepcopy(base or MINIMAL)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


def _problems(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "run.yml")
    return str(info.value)


def test_shipped_recipe_is_the_published_one():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped file uses no ignored options
        cfg = load_config(RECIPE)
    t, tr = cfg.datasets.train, cfg.train
    assert (t.num_frame, t.gt_size, t.batch_size_per_gpu) == (32, 256, 2)
    assert t.use_hflip and t.use_rot and t.val_partition == "REDS4"
    assert (tr.optim_g.type, tr.optim_g.lr, tr.optim_g.betas, tr.optim_g.weight_decay) == (
        "Adam", 1e-4, (0.9, 0.99), 0.0)
    assert (tr.scheduler.periods, tr.scheduler.restart_weights, tr.scheduler.eta_min) == (
        (600000,), (1.0,), 1e-7)
    assert (tr.total_iter, tr.fix_flow, tr.flow_lr_mul, tr.ema_decay) == (600000, 5000, 0.25,
                                                                          0.999)
    assert (tr.pixel_opt.type, tr.pixel_opt.eps, tr.pixel_opt.reduction) == (
        "CharbonnierLoss", 1e-12, "mean")
    assert (cfg.network_g.mid_channels, cfg.network_g.num_blocks) == (64, 7)
    assert cfg.val.val_freq == 5000 and isinstance(cfg.val.val_freq, int)  # "!!float 5e3"
    assert cfg.logger.save_checkpoint_freq == 5000
    assert cfg.datasets.val.clips == ("000", "011", "015", "020")
    assert not cfg.val.metrics["psnr"].test_y_channel


def test_calendar_config_parses():
    cfg = load_config(CALENDAR)
    assert cfg.datasets.val.lq_crop is not None and cfg.network_g.spynet_path


def test_round_trip_through_a_plain_dict():
    cfg = load_config(RECIPE)
    assert parse_config(to_dict(cfg)) == cfg


def test_mistyped_key_names_its_place_and_suggests_the_right_one():
    message = _problems(_with("datasets.train.gt_szie", 128))
    assert "run.yml" in message
    assert "datasets.train.gt_szie: unknown option; did you mean 'gt_size'?" in message
    message = _problems(_with("train.optim_g.betaz", [0.9, 0.99]))
    assert "train.optim_g.betaz" in message and "did you mean 'betas'?" in message


def test_unknown_key_without_a_close_match_lists_the_options():
    message = _problems(_with("train.colour", "blue"))
    assert "train.colour: unknown option (options here:" in message and "total_iter" in message
    assert "did you mean" not in message


@pytest.mark.parametrize("path, value, expected", [
    ("train.optim_g.lr", "fast", "train.optim_g.lr: expected float, got 'fast'"),
    ("datasets.train.use_hflip", 3, "datasets.train.use_hflip: expected bool, got 3"),
    ("train.total_iter", 1.5, "train.total_iter: expected int, got 1.5"),
    ("train.scheduler.periods", 600000, "train.scheduler.periods: expected a list"),
    ("train.optim_g.betas", [0.9], "expected a list of 2 values"),
    ("datasets.train.num_frame", True, "expected int, got True"),
    ("datasets.train.dataroot_gt", 5, "expected str, got 5"),
    ("train", [1, 2], "train: expected a mapping of options"),
    ("train.scheduler.type", "StepLR", "'StepLR' is not supported; choose from "
                                       "['CosineAnnealingRestartLR']"),
])
def test_wrong_types_and_values_are_reported(path, value, expected):
    assert expected in _problems(_with(path, value))


def test_all_problems_are_reported_at_once():
    raw = _with("train.optim_g.lr", "x", _with("logger.print_frq", 10))
    message = _problems(raw)
    assert "2 problems" in message and "print_frq" in message and "optim_g.lr" in message


def test_missing_required_option():
    assert "datasets.train.dataroot_gt: required option is missing" in _problems(
        {"datasets": {"train": {}}})


def test_cross_field_checks():
    assert "gt_size: 200 gives an LR crop of 50 pixels" in _problems(
        _with("datasets.train.gt_size", 200))
    assert "fewer than train.total_iter = 1000" in _problems(
        _with("train.scheduler.periods", [10], _with("train.total_iter", 1000)))
    assert "at least 2 frames" in _problems(_with("datasets.train.num_frame", 1))
    assert "ema_decay: 1.0 is outside [0, 1)" in _problems(_with("train.ema_decay", 1.0))


def test_basicsr_options_with_one_supported_value():
    parse_config(_with("datasets.train.random_reverse", False))
    assert "datasets.train.random_reverse: hirn-train supports only False (got True)" in (
        _problems(_with("datasets.train.random_reverse", True)))
    assert "supports only -1" in _problems(_with("train.warmup_iter", 100))


def test_harmless_basicsr_options_are_ignored_with_a_warning():
    with pytest.warns(UserWarning, match=r"datasets\.train\.io_backend \(frames are read"):
        cfg = parse_config(_with("datasets.train.io_backend", {"type": "lmdb"}))
    assert cfg == parse_config(MINIMAL)


def test_yaml_numbers_without_a_dot_are_floats(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(MINIMAL) + "train:\n  optim_g:\n    lr: 2e-4\n")
    assert math.isclose(load_config(path).train.optim_g.lr, 2e-4)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yml")
    (tmp_path / "bad.yml").write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(tmp_path / "bad.yml")
