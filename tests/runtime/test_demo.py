"""``hirn-run demo``: runs on a fresh machine (no files, no ../shared) and says what it shows."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from support import RUN_MAX_LEVELS, run_cli

from hirn.core.logs import setup_logging
from hirn.runtime.backends import BackendConfig
from hirn.runtime.backends.torch_backend import untrained_model
from hirn.runtime.demo import (
    HR_SIZE,
    INPUT_NAME,
    OUTPUT_NAME,
    SIDE_BY_SIDE,
    bicubic,
    run_demo,
    shrink,
    synthetic_clip,
)
from hirn.runtime.video import open_source, read_frames
from hirn.train import load_model
from hirn.train.metrics import psnr

# Tolerances, all in one place.
PRINTED_DB_ATOL = 0.006  # PSNR printed with 2 decimals
MIN_TEXTURE = 100.0  # variance of the Laplacian of an original frame: real detail to recover
MIN_MOTION = 10.0  # mean absolute change between two frames, in 8-bit levels
LABEL_ROWS = 30  # rows of the side-by-side picture that carry the labels
SCORE_DB_ATOL = 0.01  # the demo's HiRN PSNR vs the model's own output (values within one level)


def test_the_synthetic_clip_moves_has_detail_and_is_always_the_same():
    clip = synthetic_clip(3)
    assert clip.shape == (3, *HR_SIZE, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, synthetic_clip(3))
    assert cv2.Laplacian(cv2.cvtColor(clip[0], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() \
        > MIN_TEXTURE
    assert np.abs(clip[1].astype(int) - clip[0]).mean() > MIN_MOTION
    assert shrink(clip).shape == (3, HR_SIZE[0] // 4, HR_SIZE[1] // 4, 3)


def test_every_source_of_weights_counts_as_trained():
    """The demo calls its weights untrained only when none were given (engines included)."""
    assert BackendConfig().weights is None
    for field in ("checkpoint", "onnx_dir", "engines_dir"):
        assert BackendConfig(**{field: Path("w")}).weights == Path("w")


def test_untrained_weights_are_seeded():
    a, b = untrained_model().state_dict(), untrained_model().state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert a["feat_extract.main.0.weight"].shape[0] == 64  # the published size


def test_demo_command_writes_the_video_picture_and_psnr(tmp_path):
    folder = tmp_path / "demo"
    result = run_cli("hirn-run", "demo", "-o", str(folder), "--frames", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "UNTRAINED" in result.stdout and "--checkpoint" in result.stdout
    scores = re.search(r"bicubic (\d+\.\d+) dB, HiRN \(untrained\) (\d+\.\d+) dB",
                       result.stdout)
    assert scores, result.stdout
    video = open_source(folder / OUTPUT_NAME)
    assert (video.width, video.height, video.frame_count) == (HR_SIZE[1], HR_SIZE[0], 2)
    lr = read_frames(folder / INPUT_NAME)  # lossless PNGs
    original = synthetic_clip(2)
    assert np.array_equal(lr, shrink(original))
    baseline = bicubic(lr)
    expected = np.mean([psnr(b, o) for b, o in zip(baseline, original)])
    assert float(scores.group(1)) == pytest.approx(expected, abs=PRINTED_DB_ATOL)
    picture = cv2.cvtColor(cv2.imread(str(folder / SIDE_BY_SIDE)), cv2.COLOR_BGR2RGB)
    width = HR_SIZE[1]
    assert picture.shape == (HR_SIZE[0], 3 * width + 8, 3)
    panels = [picture[LABEL_ROWS:, k * (width + 4):k * (width + 4) + width] for k in range(3)]
    assert np.array_equal(panels[0], baseline[1][LABEL_ROWS:])  # bicubic | . | .
    assert np.array_equal(panels[2], original[1][LABEL_ROWS:])  # . | . | original


def test_demo_with_a_checkpoint_does_not_call_its_weights_untrained(tmp_path, capsys,
                                                                   tiny_checkpoint,
                                                                   one_thread):
    setup_logging()  # as hirn-run does: information lines on stderr
    scores = run_demo(tmp_path, BackendConfig(checkpoint=tiny_checkpoint), frames=2)
    out = capsys.readouterr()
    assert "UNTRAINED" not in out.out and str(tiny_checkpoint) in out.err
    assert f"HiRN {scores['hirn']:.2f} dB" in out.out
    assert sorted(p.name for p in tmp_path.iterdir()) == [INPUT_NAME, SIDE_BY_SIDE,
                                                          OUTPUT_NAME]


def test_demo_hirn_panel_and_psnr_come_from_the_model(tmp_path, capsys, tiny_checkpoint,
                                                      one_thread):
    """The middle panel is the model's output for the middle frame, and the HiRN PSNR is
    that of the model's rounded output for the whole clip against the original."""
    scores = run_demo(tmp_path, BackendConfig(checkpoint=tiny_checkpoint), frames=2)
    out = capsys.readouterr().out
    lr = read_frames(tmp_path / INPUT_NAME)
    with torch.no_grad():
        x = torch.from_numpy(lr).permute(0, 3, 1, 2).float().div(255)[None]
        sr = load_model(tiny_checkpoint)(x)[0].clamp(0, 1).mul(255).round().byte()
    sr = sr.permute(0, 2, 3, 1).numpy()
    original = synthetic_clip(2)
    picture = cv2.cvtColor(cv2.imread(str(tmp_path / SIDE_BY_SIDE)), cv2.COLOR_BGR2RGB)
    width = HR_SIZE[1]
    panel = picture[LABEL_ROWS:, width + 4:2 * width + 4].astype(int)
    assert np.abs(panel - sr[1][LABEL_ROWS:]).max() <= RUN_MAX_LEVELS
    assert not np.array_equal(panel, bicubic(lr)[1][LABEL_ROWS:])
    expected = np.mean([psnr(s, o) for s, o in zip(sr, original)])
    assert scores["hirn"] == pytest.approx(expected, abs=SCORE_DB_ATOL)
    assert f"HiRN {scores['hirn']:.2f} dB" in out
