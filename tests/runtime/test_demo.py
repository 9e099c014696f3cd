"""``hirn-run demo``: runs on a fresh machine (no files, no ../shared) and says what it shows."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from support import DEMO_SCORE_DB_ATOL, PRINTED_DB_ATOL, RUN_TORCH_MAX_LEVELS, run_cli

from hirn.core.default_weights import DEFAULT_CHECKPOINT
from hirn.core.logs import setup_logging
from hirn.media.video import open_source, read_frames
from hirn.runtime.backends import BackendConfig
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
from hirn.runtime.weights import infer_backend
from hirn.train import load_model
from hirn.train.metrics import psnr

MIN_TEXTURE = 100.0  # variance of the Laplacian of an original frame: real detail to recover
MIN_MOTION = 10.0  # mean absolute change between two frames, in 8-bit levels
LABEL_ROWS = 30  # rows of the side-by-side picture that carry the labels


def test_the_synthetic_clip_moves_has_detail_and_is_always_the_same():
    clip = synthetic_clip(3)
    assert clip.shape == (3, *HR_SIZE, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, synthetic_clip(3))
    assert cv2.Laplacian(cv2.cvtColor(clip[0], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() \
        > MIN_TEXTURE
    assert np.abs(clip[1].astype(int) - clip[0]).mean() > MIN_MOTION
    assert shrink(clip).shape == (3, HR_SIZE[0] // 4, HR_SIZE[1] // 4, 3)


def test_the_built_in_weights_run_when_none_are_given_or_when_named():
    """No weights, or ``--checkpoint default``: the built-in ones (torch); any weights
    given are kept as given."""
    for config in (BackendConfig(backend=None), BackendConfig(backend=None,
                                                              checkpoint=Path("default"))):
        chosen = infer_backend(config)
        assert chosen.checkpoint == DEFAULT_CHECKPOINT and chosen.backend == "torch"
    for field in ("checkpoint", "onnx_dir", "engines_dir"):
        assert infer_backend(BackendConfig(backend=None, **{field: Path("w")})).weights \
            == Path("w")


def test_demo_command_writes_the_video_picture_and_psnr(tmp_path):
    folder = tmp_path / "demo"
    result = run_cli("hirn-run", "demo", "-o", str(folder), "--frames", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "built-in default weights" in result.stderr
    scores = re.search(r"bicubic (\d+\.\d+) dB, HiRN (\d+\.\d+) dB", result.stdout)
    assert scores, result.stdout
    assert float(scores.group(2)) > float(scores.group(1))  # the default weights are trained
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


def test_demo_with_a_checkpoint_uses_it(tmp_path, capsys,
                                                                   tiny_checkpoint,
                                                                   one_thread):
    setup_logging()  # as hirn-run does: information lines on stderr
    scores = run_demo(tmp_path, BackendConfig(checkpoint=tiny_checkpoint), frames=2)
    out = capsys.readouterr()
    assert "default" not in out.err and str(tiny_checkpoint) in out.err
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
    assert np.abs(panel - sr[1][LABEL_ROWS:]).max() <= RUN_TORCH_MAX_LEVELS
    assert not np.array_equal(panel, bicubic(lr)[1][LABEL_ROWS:])
    expected = np.mean([psnr(s, o) for s, o in zip(sr, original)])
    assert scores["hirn"] == pytest.approx(expected, abs=DEMO_SCORE_DB_ATOL)
    assert f"HiRN {scores['hirn']:.2f} dB" in out
