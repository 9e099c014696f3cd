"""The whole toolchain as a user runs it, on a model size that is not the published one.

``hirn-train`` trains a small HiRN (8 channels, 2 blocks) for two iterations on synthetic
frames; its checkpoint goes through ``hirn-export onnx``, ``hirn-export check``,
``hirn-eval --checkpoint`` and ``hirn-run`` with the checkpoint (torch) and with the ONNX
folder (onnxruntime). Nothing is told the model's size but ``hirn-train``'s config: every
later command reads it from the checkpoint or the folder. All are subprocesses of the
installed console scripts; no ../shared data is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from support import RUN_MAX_LEVELS, RUN_MIN_SHARE_WITHIN, run_cli

from hirn.media.video import read_frames
from hirn.train import load_model

SIZE = {"mid_channels": 8, "num_blocks": 2}  # neither the published size nor the tests' tiny one
GT_SIZE = 256  # training crops: 64x64 LR
LR_FRAMES, LR_HEIGHT, LR_WIDTH = 4, 64, 80
TIMEOUT_S = 300  # per command, on a loaded machine


def textured_frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``[count, H, W, 3]`` uint8 RGB: blurred noise and stripes panning 2 pixels a frame."""
    rng = np.random.default_rng(seed)
    pad = 2 * count
    noise = cv2.GaussianBlur(rng.normal(128, 60, (height + pad, width + pad, 3)), (0, 0), 1.5)
    y, x = np.mgrid[0:height + pad, 0:width + pad]
    canvas = np.clip(noise + 40 * (((x + y) // 5) % 2)[..., None], 0, 255).astype(np.uint8)
    return np.stack([canvas[2 * t:2 * t + height, 2 * t:2 * t + width] for t in range(count)])


def write_pngs(folder: Path, frames: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        assert cv2.imwrite(str(folder / f"{index:03d}.png"), cv2.cvtColor(frame,
                                                                          cv2.COLOR_RGB2BGR))
    return folder


def ok(result) -> str:
    """The command's stdout, after checking that it succeeded cleanly."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stdout


def within_bar(a: np.ndarray, b: np.ndarray) -> bool:
    """The parity bar of hirn-run outputs: nearly every pixel within a level or so."""
    assert a.shape == b.shape
    return (np.abs(a.astype(int) - b) <= RUN_MAX_LEVELS).mean() >= RUN_MIN_SHARE_WITHIN


@pytest.fixture
def serial(monkeypatch):
    """One thread per process (the subprocesses inherit it): fastest on a shared CPU."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_train_export_check_evaluate_and_run_a_non_default_size(tmp_path, serial):
    # hirn-train: a few iterations on one synthetic clip
    write_pngs(tmp_path / "train" / "clip", textured_frames(2, GT_SIZE, GT_SIZE))
    config = {
        "name": "pipeline", "manual_seed": 0,
        "datasets": {"train": {"dataroot_gt": str(tmp_path / "train"), "num_frame": 2,
                               "gt_size": GT_SIZE, "batch_size_per_gpu": 1,
                               "num_worker_per_gpu": 0}},
        "network_g": SIZE,
        "train": {"total_iter": 2, "fix_flow": 1, "ema_decay": 0.9, "optim_g": {"lr": 1e-3},
                  "scheduler": {"periods": [2], "restart_weights": [1], "eta_min": 1e-5}},
        "val": {"val_freq": 2},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2},
    }
    (tmp_path / "train.yml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    ok(run_cli("hirn-train", str(tmp_path / "train.yml"), "--work-dir", str(work),
               "--device", "cpu", "--no-progress", timeout=TIMEOUT_S))
    checkpoint = work / "models" / "net_g_latest.pth"
    model = load_model(checkpoint)
    assert (model.mid_channels, model.num_blocks) == (8, 2)

    # hirn-export onnx and check: the folder knows the size too
    graphs = tmp_path / "graphs"
    ok(run_cli("hirn-export", "onnx", str(checkpoint), "-o", str(graphs), timeout=TIMEOUT_S))
    manifest = json.loads((graphs / "manifest.json").read_text())
    assert {k: manifest["model"][k] for k in SIZE} == SIZE
    assert "graphs intact" in ok(run_cli("hirn-export", "check", str(graphs)))

    # hirn-eval: the paper's protocol on a synthetic "vid4" clip (LR made by imresize)
    write_pngs(tmp_path / "eval" / "vid4" / "calendar" / "GT",
               textured_frames(LR_FRAMES, 4 * LR_HEIGHT, 4 * LR_WIDTH, seed=1))
    table = ok(run_cli("hirn-eval", "--dataset", "vid4", "--data-root", str(tmp_path / "eval"),
                       "--clips", "calendar", "--checkpoint", str(checkpoint),
                       timeout=TIMEOUT_S))
    assert "| calendar | 4 |" in table and "hirn:net_g_latest.pth" in table

    # hirn-run with the checkpoint (torch) and with the ONNX folder (onnxruntime)
    lr = textured_frames(LR_FRAMES, LR_HEIGHT, LR_WIDTH, seed=2)
    frames = write_pngs(tmp_path / "input", lr)
    outputs = {}
    for backend, weights in (("torch", ["--checkpoint", str(checkpoint)]),
                             ("onnxruntime", ["--onnx", str(graphs)])):
        out = tmp_path / f"out_{backend}"
        ok(run_cli("hirn-run", str(frames), "-o", str(out), *weights, "--threads", "1",
                   timeout=TIMEOUT_S))
        outputs[backend] = read_frames(out)
        assert outputs[backend].shape == (LR_FRAMES, 4 * LR_HEIGHT, 4 * LR_WIDTH, 3)

    with torch.no_grad():
        clip = torch.from_numpy(lr).permute(0, 3, 1, 2).float().div(255)
        expected = model(clip[None])[0].clamp(0, 1).mul(255).round().byte()
    expected = expected.permute(0, 2, 3, 1).numpy()
    assert within_bar(outputs["torch"], expected)
    assert within_bar(outputs["onnxruntime"], outputs["torch"])
