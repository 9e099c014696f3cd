"""hirn-eval: the protocol's numbers on real Vid4 frames, a checkpoint run, and clear errors."""

import json
import math
import subprocess
import sys

import click
import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import CALENDAR_LR, DATA, METRIC_JSON_ATOL, needs_shared

from hirn.core.errors import HirnError
from hirn.model.imresize import imresize
from hirn.train import HiRN, save_checkpoint
from hirn.train.evaluate import (
    DatasetError,
    _parse_crop,
    bicubic_upscaler,
    checkpoint_upscaler,
    default_data_root,
    evaluate,
    load_clip,
    main,
)
from hirn.train.metrics import psnr, rgb_to_y, ssim

CALENDAR = DATA / "vid4" / "calendar"


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _hirn_eval(*args):
    return subprocess.run([sys.executable, "-m", "hirn.train.evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def _write_clip(folder, frames, sub="GT"):
    (folder / sub).mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / sub / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


@needs_shared(CALENDAR_LR)
def test_bicubic_cli_on_calendar_matches_metrics_computed_here(tmp_path):
    result = _hirn_eval("--dataset", "vid4", "--data-root", DATA, "--clips", "calendar",
                        "--max-frames", 3, "--method", "bicubic", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    (clip,) = report["clips"]
    assert (clip["name"], clip["frames"], clip["lr_source"]) == ("calendar", 3,
                                                                 "LR_bicubic_matlab")
    expected_psnr, expected_ssim = [], []
    for name in ("000.png", "001.png", "002.png"):
        sr = imresize(_rgb(CALENDAR / "LR_bicubic_matlab" / name), 4)
        y_sr, y_gt = rgb_to_y(sr), rgb_to_y(_rgb(CALENDAR / "GT" / name))
        expected_psnr.append(psnr(y_sr, y_gt))
        expected_ssim.append(ssim(y_sr, y_gt))
    np.testing.assert_allclose(clip["psnr_per_frame"], expected_psnr, rtol=0, atol=METRIC_JSON_ATOL)
    np.testing.assert_allclose(clip["ssim_per_frame"], expected_ssim, rtol=0, atol=METRIC_JSON_ATOL)
    assert math.isclose(report["mean"]["psnr"], np.mean(expected_psnr), abs_tol=METRIC_JSON_ATOL)
    assert math.isclose(report["mean"]["ssim"], np.mean(expected_ssim), abs_tol=METRIC_JSON_ATOL)
    assert 15 < report["mean"]["psnr"] < 30 and report["channel"] == "Y (BT.601)"
    # The table goes to stdout and into the Markdown file, with the mean.
    row = f"| calendar | 3 | {np.mean(expected_psnr):.2f} | {np.mean(expected_ssim):.4f} |"
    assert row in result.stdout and row in (tmp_path / "out.md").read_text()


@needs_shared(CALENDAR_LR)
def test_checkpoint_cli_runs_the_model_on_a_crop(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "random.pth", HiRN())
    result = _hirn_eval("--data-root", DATA, "--clips", "calendar", "--max-frames", 2,
                        "--crop", "64", "--checkpoint", tmp_path / "random.pth",
                        "-o", tmp_path / "res" / "hirn")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "res" / "hirn.json").read_text())
    assert report["method"] == "hirn:random.pth" and report["options"]["crop"] == [64, 64]
    (clip,) = report["clips"]
    assert clip["frames"] == 2 and len(clip["psnr_per_frame"]) == 2
    # A random network is far from the frames but its rounded output is scored.
    assert all(0 < p < 30 for p in clip["psnr_per_frame"])
    assert all(-1 <= s < 0.9 for s in clip["ssim_per_frame"])
    assert "| calendar | 2 |" in (tmp_path / "res" / "hirn.md").read_text()


class _FakeModel(torch.nn.Module):
    """Nearest x4 with a gain that leaves [0, 1], to check the upscaler's plumbing."""

    def forward(self, lq):
        assert lq.dim() == 5 and lq.dtype == torch.float32 and float(lq.max()) <= 1
        assert not torch.is_grad_enabled()
        n, t, c, h, w = lq.shape
        up = torch.nn.functional.interpolate(lq.flatten(0, 1), scale_factor=4, mode="nearest")
        return (up * 1.2 - 0.1).view(n, t, c, 4 * h, 4 * w)


def test_checkpoint_upscaler_feeds_the_clip_whole_and_rounds(monkeypatch):
    import hirn.model.checkpoint as checkpoint

    calls = []
    monkeypatch.setattr(checkpoint, "load_model",
                        lambda path, **kw: calls.append((path, kw)) or _FakeModel())
    upscale = checkpoint_upscaler("any.pth", "cpu", "params_ema")
    lr = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    sr = upscale(lr)
    assert calls[0][1]["param_key"] == "params_ema"
    assert sr.dtype == np.uint8 and sr.shape == (3, 32, 40, 3)
    values = (lr.astype(np.float32) / 255 * 1.2 - 0.1).clip(0, 1) * 255
    expected = np.round(values).astype(np.uint8).repeat(4, axis=1).repeat(4, axis=2)
    np.testing.assert_array_equal(sr, expected)
    assert (sr == 0).any() and (sr == 255).any()  # clamped, not wrapped


def test_lr_made_from_gt_and_reds4_scored_on_rgb(tmp_path):
    """Without an LR folder the LR frames are imresize(GT, 1/4); REDS4 is scored on RGB."""
    rng = np.random.default_rng(0)
    gt = cv2.GaussianBlur(rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8).reshape(
        128, 96, 3), (7, 7), 2).reshape(2, 64, 96, 3)
    _write_clip(tmp_path / "reds4" / "011", gt)
    report = evaluate("reds4", tmp_path, bicubic_upscaler(), "bicubic")
    (clip,) = report.clips
    assert clip.name == "011" and clip.lr_source == "imresize(GT, 1/4)"
    sr = [imresize(imresize(g, 0.25), 4) for g in gt]
    np.testing.assert_allclose(clip.psnr_per_frame, [psnr(s, g) for s, g in zip(sr, gt)],
                               rtol=0, atol=METRIC_JSON_ATOL)
    np.testing.assert_allclose(clip.ssim_per_frame, [ssim(s, g) for s, g in zip(sr, gt)],
                               rtol=0, atol=METRIC_JSON_ATOL)
    assert report.channel == "RGB" and report.mean_psnr == clip.psnr


def test_mean_is_over_clips_not_frames(tmp_path):
    rng = np.random.default_rng(1)
    for name, frames in (("calendar", 1), ("walk", 3)):
        _write_clip(tmp_path / "vid4" / name, rng.integers(0, 256, (frames, 32, 32, 3),
                                                           dtype=np.uint8))
    report = evaluate("vid4", tmp_path, bicubic_upscaler(), "bicubic")
    assert [c.name for c in report.clips] == ["calendar", "walk"]
    assert math.isclose(report.mean_psnr, (report.clips[0].psnr + report.clips[1].psnr) / 2)
    assert math.isclose(report.clips[1].psnr, np.mean(report.clips[1].psnr_per_frame))


def test_default_data_root_follows_hirn_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("HIRN_SHARED", str(tmp_path))
    assert default_data_root() is None
    (tmp_path / "data").mkdir()
    assert default_data_root() == tmp_path / "data"


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("args, message", [
    (["--data-root", "{tmp}/nowhere", "--method", "bicubic"], "is not a directory"),
    (["--data-root", "{tmp}", "--clips", "nosuchclip", "--method", "bicubic"],
     "unknown clip(s) ['nosuchclip']"),
    (["--data-root", "{tmp}", "--checkpoint", "{tmp}/missing.pth"], "checkpoint not found"),
    (["--data-root", "{tmp}", "--checkpoint", "{tmp}/garbage.pth"], "cannot read checkpoint"),
    (["--data-root", "{tmp}", "--checkpoint", "{tmp}/small.pth"], "does not fit HiRN"),
    (["--data-root", "{tmp}", "--method", "bicubic", "--crop", "40"], "does not fit LR frames"),
])
def test_user_errors_are_one_line_messages(tmp_path, args, message):
    _write_clip(tmp_path / "vid4" / "walk", np.zeros((1, 64, 64, 3), np.uint8))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    # any HiRN size loads (its weights say which); one that lacks a weight does not
    state = HiRN(mid_channels=8, num_blocks=1).state_dict()
    del state["conv_last.weight"]
    save_checkpoint(tmp_path / "small.pth", state)
    result = _cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


@pytest.mark.parametrize("args", [[], ["--method", "bicubic", "--checkpoint", "x.pth"],
                                  ["--method", "bicubic", "--crop", "0x8"]])
def test_usage_errors(args):
    result = _cli(*args)
    assert result.exit_code == 2 and "Error" in result.output


def test_load_clip_errors(tmp_path):
    # the message names the kinds of frames looked for
    with pytest.raises(DatasetError, match=r"no frames \(\.png/\.jpg/\.jpeg/\.bmp\) in"):
        (tmp_path / "c" / "GT").mkdir(parents=True)
        load_clip(tmp_path / "c")
    _write_clip(tmp_path / "odd", np.zeros((1, 30, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match="not divisible by 4"):
        load_clip(tmp_path / "odd")
    _write_clip(tmp_path / "short", np.zeros((2, 32, 32, 3), np.uint8))
    _write_clip(tmp_path / "short", np.zeros((1, 8, 8, 3), np.uint8), sub="LR")
    with pytest.raises(DatasetError, match="lacks 1 frame"):
        load_clip(tmp_path / "short")
    _write_clip(tmp_path / "mixed", np.zeros((1, 32, 32, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "mixed" / "GT" / "001.png"), np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match="differ in size"):
        load_clip(tmp_path / "mixed")


def test_load_clip_takes_the_lr_folder_and_the_first_frames(tmp_path):
    """In this process (the CLI tests run hirn-eval as a subprocess): the GT frames, the LR
    frames of the first LR folder present (not made from GT), and its name as the source."""
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    lr = rng.integers(0, 256, (3, 4, 6, 3), dtype=np.uint8)
    _write_clip(tmp_path / "c", gt)
    _write_clip(tmp_path / "c", lr, sub="LR_bicubic")
    _write_clip(tmp_path / "c", lr[::-1], sub="LR")  # a later choice: not read
    got_gt, got_lr, source = load_clip(tmp_path / "c", max_frames=2)
    assert np.array_equal(got_gt, gt[:2]) and np.array_equal(got_lr, lr[:2])
    assert source == "LR_bicubic"
    assert len(load_clip(tmp_path / "c")[1]) == 3  # no max_frames: every frame
    (tmp_path / "c" / "LR_bicubic" / "002.png").unlink()
    with pytest.raises(DatasetError, match=r"LR_bicubic lacks 1 frame\(s\) of GT, e\.g\. 002"):
        load_clip(tmp_path / "c")
    _write_clip(tmp_path / "odd", np.zeros((1, 30, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"GT frames in \S*odd/GT are 30x32, not divisible"):
        load_clip(tmp_path / "odd")
    (tmp_path / "e" / "GT").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"in \S*e/GT$"):
        load_clip(tmp_path / "e")
    _write_clip(tmp_path / "mixed", np.zeros((1, 32, 32, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "mixed" / "GT" / "001.png"), np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"frames in \S*mixed/GT differ in size"):
        load_clip(tmp_path / "mixed")
    cv2.imwrite(str(tmp_path / "c" / "GT" / "002.png"), np.zeros((16, 24, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "c" / "LR_bicubic" / "002.png"), np.zeros((5, 6, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"frames in \S*c/LR_bicubic differ in size"):
        load_clip(tmp_path / "c")


def test_crop_bounds_and_lr_size_checks_in_process(tmp_path):
    _write_clip(tmp_path / "c", np.zeros((1, 16, 24, 3), np.uint8))  # LR made: 4x6
    assert load_clip(tmp_path / "c", crop=(4, 6))[1].shape == (1, 4, 6, 3)  # all of it fits
    assert load_clip(tmp_path / "c", crop=(1, 1))[1].shape == (1, 1, 1, 3)
    for crop in [(5, 6), (4, 7), (5, 3), (0, 3), (3, 0)]:
        with pytest.raises(DatasetError, match=rf"crop {crop[0]}x{crop[1]} does not fit LR "
                                               r"frames of 4x6 in"):
            load_clip(tmp_path / "c", crop=crop)
    _write_clip(tmp_path / "c", np.zeros((1, 4, 5, 3), np.uint8), sub="LR")  # one column short
    with pytest.raises(DatasetError, match=r"LR frames in \S*c are 4x5 but GT frames are "
                                           r"16x24: expected exactly x4"):
        load_clip(tmp_path / "c")


@pytest.mark.parametrize("value, expected", [("1", (1, 1)), ("7x1", (7, 1)), ("2X3", (2, 3))])
def test_crop_option_values(value, expected):
    assert _parse_crop(None, None, value) == expected


@pytest.mark.parametrize("value", ["abc", "0", "1x0", "1x2x3"])
def test_bad_crop_option_values(value):
    with pytest.raises(click.BadParameter, match=r"expected N or HxW in LR pixels"):
        _parse_crop(None, None, value)


def test_upscaler_with_wrong_output_is_reported(tmp_path):
    _write_clip(tmp_path / "vid4" / "walk", np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(HirnError, match=r"expected uint8 \[1, 32, 32, 3\]"):
        evaluate("vid4", tmp_path, lambda lr: lr.repeat(2, axis=1).repeat(2, axis=2), "x2")
    with pytest.raises(HirnError, match="returned float64"):
        evaluate("vid4", tmp_path, lambda lr: np.zeros((1, 32, 32, 3)), "float")


def _nearest_x4(lr: np.ndarray) -> np.ndarray:
    """An upscaler whose output for a crop is exactly the same crop of its output for the
    whole frame (each LR pixel becomes a 4x4 block)."""
    return lr.repeat(4, axis=1).repeat(4, axis=2)


def _textured_gt(frames: int, height: int, width: int, seed: int = 2) -> np.ndarray:
    """Smooth noise: every row differs, so a ground truth off by one LR row scores lower."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    return np.stack([cv2.GaussianBlur(f, (9, 9), 3) for f in noise])


@pytest.mark.parametrize("crop", [(10, 10), (9, 14)])
def test_a_crop_scores_as_the_same_region_of_the_whole_frame(tmp_path, crop):
    """``--crop``: the LR crop and the ground truth stay aligned (GT window = 4x the LR one),
    so a local upscaler scores on the crop what it scores on that region uncropped."""
    gt = _textured_gt(2, 96, 128)  # LR 24x32 = imresize(GT, 1/4), made by hirn-eval
    _write_clip(tmp_path / "vid4" / "walk", gt)
    report = evaluate("vid4", tmp_path, _nearest_x4, "nearest", crop=crop)
    lr = np.stack([imresize(g, 0.25) for g in gt])
    top, left = (24 - crop[0]) // 2, (32 - crop[1]) // 2  # centred, in LR pixels
    rows = slice(4 * top, 4 * (top + crop[0]))
    cols = slice(4 * left, 4 * (left + crop[1]))
    sr = _nearest_x4(lr)
    expected = [psnr(rgb_to_y(s[rows, cols]), rgb_to_y(g[rows, cols])) for s, g in zip(sr, gt)]
    np.testing.assert_allclose(report.clips[0].psnr_per_frame, expected, rtol=0,
                               atol=METRIC_JSON_ATOL)
    # the data would show a misalignment: one LR row off scores clearly lower
    off = slice(rows.start + 4, rows.stop + 4)
    shifted = np.mean([psnr(rgb_to_y(s[rows, cols]), rgb_to_y(g[off, cols]))
                       for s, g in zip(sr, gt)])
    assert shifted < np.mean(expected) - 1.0


def test_crop_cli_scores_bicubic_on_the_matching_gt_window(tmp_path):
    """``hirn-eval --crop HxW --method bicubic``: the table shows PSNR of imresize(LR crop, 4)
    against the GT window 4x the LR crop, computed here by slicing."""
    gt = _textured_gt(1, 96, 128, seed=3)
    _write_clip(tmp_path / "vid4" / "city", gt)
    result = _cli("--data-root", tmp_path, "--method", "bicubic", "--crop", "12x16",
                  "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    lr = imresize(gt[0], 0.25)  # 24x32; the centred 12x16 crop starts at row 6, column 8
    sr = imresize(lr[6:18, 8:24], 4)
    expected = psnr(rgb_to_y(sr), rgb_to_y(gt[0][24:72, 32:96]))
    (clip,) = json.loads((tmp_path / "out.json").read_text())["clips"]
    assert math.isclose(clip["psnr"], expected, abs_tol=METRIC_JSON_ATOL)
    assert f"| city | 1 | {expected:.2f} |" in result.output


def test_checkpoint_scores_match_an_independent_computation(tmp_path):
    """``hirn-eval --checkpoint``: per-frame PSNR equals scikit-image's PSNR on the BT.601 Y
    of the model's rounded output for the whole clip, against the GT frames (given LR)."""
    from skimage.metrics import peak_signal_noise_ratio

    torch.manual_seed(0)
    model = HiRN(mid_channels=8, num_blocks=1).eval()
    save_checkpoint(tmp_path / "tiny.pth", model)
    gt = _textured_gt(2, 256, 256, seed=4)
    lr = np.stack([cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA) for g in gt])
    _write_clip(tmp_path / "vid4" / "foliage", gt)
    _write_clip(tmp_path / "vid4" / "foliage", lr, sub="LR_bicubic")
    result = _cli("--data-root", tmp_path, "--checkpoint", tmp_path / "tiny.pth",
                  "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    (clip,) = json.loads((tmp_path / "out.json").read_text())["clips"]
    assert (clip["frames"], clip["lr_source"]) == (2, "LR_bicubic")
    with torch.no_grad():
        x = torch.from_numpy(lr).permute(0, 3, 1, 2).float().div(255)[None]
        sr = model(x)[0].clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()

    def luma(rgb):  # BT.601, RGB in [0, 1], Y on 0..255, not rounded
        rgb = rgb.astype(np.float64) / 255
        return 16 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]

    expected = [peak_signal_noise_ratio(luma(g), luma(s), data_range=255)
                for s, g in zip(sr, gt)]
    np.testing.assert_allclose(clip["psnr_per_frame"], expected, rtol=0, atol=METRIC_JSON_ATOL)
    assert math.isclose(clip["psnr"], np.mean(expected), abs_tol=METRIC_JSON_ATOL)
