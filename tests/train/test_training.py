"""The training loop: loss, scheduler, EMA, flow freezing, exact resume, torchrun (gloo)."""

import json
import math
import os
import subprocess
import sys
from datetime import datetime
from importlib import metadata

import cv2
import pytest
import torch
import yaml
from support import DATA, LR_RTOL, REPO, WEIGHTS, needs_shared

from hirn.core.errors import HirnError
from hirn.train import HiRN
from hirn.train.config import parse_config
from hirn.train.ema import EMA
from hirn.train.loop import (
    LOG_NAME,
    _changes,
    amp_dtype,
    build_optimizer,
    charbonnier_loss,
    resolve_resume,
    set_flow_trainable,
    train,
)
from hirn.train.schedulers import CosineAnnealingRestartLR

SPYNET = WEIGHTS / "spynet_sintel_final.pth"
CALENDAR_GT = DATA / "vid4" / "calendar" / "GT"
CALENDAR_LR = DATA / "vid4" / "calendar" / "LR_bicubic_matlab"
TORCHRUN_TIMEOUT_S = 300
MIN_LOSS_DROP = 0.01     # relative: mean of the last two logged losses vs the first two

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/train/conftest.py


def _logs(work_dir):
    return [json.loads(line) for line in (work_dir / LOG_NAME).read_text().splitlines()]


def test_charbonnier_by_hand():
    pred = torch.tensor([0.0, 1.0, 0.5, 0.25])
    gt = torch.tensor([3.0, 1.0, 0.0, 0.25])
    # sqrt(9 + 1e-12), sqrt(1e-12) = 1e-6, sqrt(0.25 + 1e-12), 1e-6
    by_hand = (math.sqrt(9 + 1e-12) + 1e-6 + math.sqrt(0.25 + 1e-12) + 1e-6) / 4
    assert charbonnier_loss(pred.double(), gt.double()).item() == pytest.approx(by_hand, rel=1e-15)
    assert charbonnier_loss(pred, pred).item() == pytest.approx(1e-6, rel=1e-6)
    assert charbonnier_loss(pred.double(), gt.double(), reduction="sum").item() == pytest.approx(
        4 * by_hand, rel=1e-15)


def test_scheduler_matches_the_closed_form_with_restarts():
    base, eta_min, periods, weights = 1e-3, 1e-7, [10, 20], [1.0, 0.5]
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr": base}, {"params": [b], "lr": base / 4}])
    sched = CosineAnnealingRestartLR(opt, periods, weights, eta_min)
    lrs = {0: [g["lr"] for g in opt.param_groups]}
    for it in range(1, 31):
        opt.step()
        sched.step()
        lrs[it] = [g["lr"] for g in opt.param_groups]

    def closed(it, lr0):
        start, period, w = (0, 10, 1.0) if it <= 10 else (10, 20, 0.5)
        return eta_min + w * (lr0 - eta_min) * (1 + math.cos(math.pi * (it - start) / period)) / 2

    for it in (0, 1, 5, 10, 11, 20, 30):
        for got, lr0 in zip(lrs[it], (base, base / 4)):
            assert got == pytest.approx(closed(it, lr0), rel=LR_RTOL)
    assert lrs[5][0] == pytest.approx((base + eta_min) / 2)  # half way down the first cycle
    assert lrs[10][0] == pytest.approx(eta_min) and lrs[30][1] == pytest.approx(eta_min)
    assert lrs[11][0] < 0.5 * base  # the restart peaks at restart_weights[1]


def test_ema_update_by_hand():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * (before + 1))
    assert not ema.module.weight.requires_grad


def test_spynet_group_and_freezing():
    model = HiRN(mid_channels=16, num_blocks=1)
    cfg = parse_config({"datasets": {"train": {"dataroot_gt": "x"}},
                        "train": {"optim_g": {"lr": 2e-4}, "flow_lr_mul": 0.25}})
    opt = build_optimizer(model, cfg)
    rest, flow = opt.param_groups
    assert (rest["lr"], flow["lr"]) == (2e-4, 5e-5)
    spynet_ids = {id(p) for p in model.spynet.parameters()}
    assert {id(p) for p in flow["params"]} == spynet_ids
    assert not spynet_ids & {id(p) for p in rest["params"]}
    set_flow_trainable(model, False)
    assert not any(p.requires_grad for p in model.spynet.parameters())
    assert all(p.requires_grad for p in model.feat_extract.parameters())


def test_amp_is_off_on_cpu():
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("fp16", torch.device("cpu")) is None


def test_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / LOG_NAME).write_text("")
    with pytest.raises(HirnError, match="--resume auto"):
        resolve_resume(tmp_path, None)
    assert resolve_resume(tmp_path, "auto") is None  # no state yet: a fresh start


def test_config_changes_are_listed_for_the_resume_warning():
    old = {"train": {"total_iter": 10, "optim_g": {"lr": 1e-4}}, "name": "a"}
    new = {"train": {"total_iter": 20, "optim_g": {"lr": 1e-4}}, "name": "a"}
    assert _changes(old, new) == ["train.total_iter: 10 -> 20"]
    assert _changes(new, new) == []


def _config(tmp_path, data_root, **train) -> dict:
    return {
        "manual_seed": 3,
        "datasets": {
            "train": {"dataroot_gt": str(data_root), "num_frame": 2, "gt_size": 256,
                      "batch_size_per_gpu": 1, "num_worker_per_gpu": 0},
            "val": {"dataroot_gt": str(CALENDAR_GT), "dataroot_lq": str(CALENDAR_LR),
                    "num_frame": 2, "lq_crop": [40, 60, 64, 64]},
        },
        "network_g": {"mid_channels": 16, "num_blocks": 1, "spynet_path": str(SPYNET)},
        "train": {"total_iter": 3, "fix_flow": 2, "ema_decay": 0.9, "optim_g": {"lr": 1e-3},
                  "scheduler": {"periods": [4], "restart_weights": [1], "eta_min": 1e-5},
                  **train},
        "val": {"val_freq": 3, "metrics": {"psnr": {"test_y_channel": True}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2},
    }


@needs_shared(SPYNET)
@needs_shared(CALENDAR_GT)
def test_resumed_run_reaches_the_same_weights_bit_for_bit(tmp_path):
    """3 iterations straight vs 1, stop, resume, 2 more (SpyNet unfreezes after the resume)."""
    cfg = parse_config(_config(tmp_path, CALENDAR_GT))
    straight = train(cfg, tmp_path / "straight", device="cpu", progress=False)
    first = train(cfg, tmp_path / "split", device="cpu", stop_after=1, progress=False)
    assert first.iteration == 1
    resumed = train(cfg, tmp_path / "split", device="cpu", resume="auto", progress=False)
    assert resumed.iteration == straight.iteration == 3
    a = torch.load(tmp_path / "straight" / "training_states" / "3.state", weights_only=False)
    b = torch.load(tmp_path / "split" / "training_states" / "3.state", weights_only=False)
    for key in ("params", "params_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert resumed.checksums == straight.checksums
    assert b["next_sample"] == 3 and b["config"]["train"]["total_iter"] == 3
    # Same losses and learning rates logged; the log holds each iteration once.
    logs = [[r for r in _logs(tmp_path / w) if "loss" in r] for w in ("straight", "split")]
    assert [r["iter"] for r in logs[1]] == [1, 2, 3]
    assert [(r["loss"], r["lr"]) for r in logs[0]] == [(r["loss"], r["lr"]) for r in logs[1]]
    assert [r["flow_frozen"] for r in logs[0]] == [True, False, False]
    # Published-format checkpoints next to the states; validation logged with bicubic.
    ckpt = torch.load(tmp_path / "split" / "models" / "net_g_latest.pth", weights_only=True)
    assert set(ckpt) == {"params", "params_ema", "model", "provenance"}
    assert all(torch.equal(ckpt["params"][k], a["params"][k]) for k in a["params"])
    # The checkpoint says which model it holds and where it comes from.
    assert ckpt["model"] == {"mid_channels": 16, "num_blocks": 1}
    provenance = ckpt["provenance"]
    assert provenance["config"] == cfg.name and provenance["iteration"] == 3
    assert provenance["data_roots"] == {"train_gt": str(CALENDAR_GT), "train_lq": None,
                                        "val_gt": str(CALENDAR_GT), "val_lq": str(CALENDAR_LR)}
    assert provenance["hirn_version"] == metadata.version("hirn")
    assert datetime.fromisoformat(provenance["date"]).tzinfo is not None
    first_ckpt = torch.load(tmp_path / "split" / "models" / "net_g_2.pth", weights_only=True)
    assert first_ckpt["provenance"]["iteration"] == 2
    val = [r for r in _logs(tmp_path / "straight") if "val_psnr" in r]
    assert [r["iter"] for r in val] == [3] and math.isfinite(val[0]["val_psnr"])
    assert val[0]["val_psnr_ema"] != val[0]["val_psnr"]
    bicubic = [r for r in _logs(tmp_path / "straight") if "val_psnr_bicubic" in r]
    assert bicubic[0]["iter"] == 0 and 15 < bicubic[0]["val_psnr_bicubic"] < 40


@needs_shared(SPYNET)
@needs_shared(CALENDAR_GT)
def test_torchrun_two_processes_stay_identical_and_learn(tmp_path):
    """torchrun, 2 CPU processes (gloo): one 2-frame clip, each rank its own flips/rotations."""
    clip = tmp_path / "clips" / "a"
    clip.mkdir(parents=True)
    for i in range(2):
        frame = cv2.imread(str(CALENDAR_GT / f"{i:03d}.png"))[100:356, 200:456]
        cv2.imwrite(str(clip / f"{i:08d}.png"), frame)
    raw = _config(tmp_path, tmp_path / "clips", total_iter=4, fix_flow=2, ema_decay=0,
                  optim_g={"lr": 2e-3},
                  scheduler={"periods": [100], "restart_weights": [1], "eta_min": 1e-7})
    del raw["datasets"]["val"]
    (tmp_path / "run.yml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "hirn.train.cli", str(tmp_path / "run.yml"), "--work-dir",
         str(tmp_path / "work"), "--device", "cpu", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = _logs(tmp_path / "work")
    start, end = logs[0], logs[-1]
    assert start["world_size"] == 2 and start["samples_per_iter"] == 2
    sums = end["param_sha256"]
    assert len(sums) == 2 and sums[0] == sums[1]  # the replicas are identical
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 4
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first * (1 - MIN_LOSS_DROP), losses
    assert [r["flow_frozen"] for r in logs if "loss" in r] == [True, False, False, False]
