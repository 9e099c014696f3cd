"""Training data: layouts, aligned crops and flips, on-the-fly LR, deterministic streams."""

import cv2
import numpy as np
import pytest
import torch
from support import DATA, LR_GT_ALIGNED_MIN_PSNR_DB, needs_shared

from hirn.model.imresize import imresize
from hirn.train.config import TrainData, ValData
from hirn.train.data import (
    DataError,
    SampleStream,
    TrainDataset,
    augment,
    find_clips,
    load_val_clips,
    lr_window,
)
from hirn.train.frames import read_rgb

VID4 = DATA / "vid4"
CALENDAR_GT = VID4 / "calendar" / "GT"
GT_CROP = (slice(96, 384), slice(160, 480))  # 288x320 GT -> 72x80 LR: room for 64x64 crops

pytestmark = needs_shared(CALENDAR_GT)


@pytest.fixture(scope="module")
def reds(tmp_path_factory):
    """A REDS-layout tree from three Vid4 frames of three clips, LR by MATLAB imresize."""
    root = tmp_path_factory.mktemp("reds")
    for clip, source in (("000", "calendar"), ("001", "city"), ("011", "walk")):
        for i in range(3):
            gt = cv2.imread(str(VID4 / source / "GT" / f"{i:03d}.png"))[GT_CROP]
            for folder, img in (("GT", gt), ("LR", imresize(gt, 0.25))):
                (root / folder / clip).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / folder / clip / f"{i:08d}.png"), img)
    return root


def _cfg(reds, lq=True, **kw) -> TrainData:
    base = dict(dataroot_gt=str(reds / "GT"), dataroot_lq=str(reds / "LR") if lq else None,
                num_frame=3, gt_size=256, use_hflip=True, use_rot=True, num_worker_per_gpu=0)
    return TrainData(**{**base, **kw})


def _psnr(a, b):
    return 10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


def _uint8(frames: torch.Tensor) -> list[np.ndarray]:
    return [f for f in (frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)]


@pytest.mark.parametrize("top, left", [(0, 0), (40, 58), (80, 116), (7, 101)])
def test_lr_window_equals_cropping_the_full_frame_imresize(top, left):
    gt = read_rgb(CALENDAR_GT / "000.png")  # 576x720 -> 144x180 (80, 116) is the corner
    full = imresize(gt, 0.25)
    assert np.array_equal(lr_window(gt, top, left, (64, 64)), full[top:top + 64, left:left + 64])


def test_reds_layout_and_reds4_holdout(reds):
    names = [c.name for c in find_clips(reds / "GT", reds / "LR")]
    assert names == ["000", "001", "011"]
    held_out = TrainDataset(_cfg(reds, val_partition="REDS4"), seed=0)
    assert [c.name for c in held_out.clips] == ["001"]  # 000 and 011 are REDS4 clips
    assert len(held_out) == 3  # one key per (clip, frame)


def test_sample_is_the_planned_crop_with_the_same_flips_on_every_frame(reds):
    ds = TrainDataset(_cfg(reds), seed=0)
    seen = set()
    for s in range(24):
        plan, sample = ds.plan(s), ds[s]
        clip = ds.clips[plan.clip]
        names = clip.frames[plan.start:plan.start + 3]
        flips = (plan.hflip, plan.vflip, plan.transpose)
        seen.add(flips)
        t, le = plan.top, plan.left
        lq = [read_rgb(clip.lq_dir / n)[t:t + 64, le:le + 64] for n in names]
        gt = [read_rgb(clip.gt_dir / n)[4 * t:4 * t + 256, 4 * le:4 * le + 256] for n in names]
        assert sample["lq"].shape == (3, 3, 64, 64) and sample["gt"].shape == (3, 3, 256, 256)
        assert sample["lq"].dtype == torch.float32 and 0 <= sample["lq"].min() <= 1
        for got, want in zip(_uint8(sample["lq"]), augment(lq, *flips)):
            assert np.array_equal(got, want)
        for got, want in zip(_uint8(sample["gt"]), augment(gt, *flips)):
            assert np.array_equal(got, want)
    assert len(seen) == 8  # every flip / 90-degree rotation occurs


def test_lr_and_gt_show_the_same_place(reds):
    """Independent of the plan: area-downscaled GT matches the LR frame by frame."""
    ds = TrainDataset(_cfg(reds), seed=1)
    for s in range(6):
        sample = ds[s]
        for lq, gt in zip(_uint8(sample["lq"]), _uint8(sample["gt"])):
            small = cv2.resize(gt, (64, 64), interpolation=cv2.INTER_AREA)
            assert _psnr(lq, small) > LR_GT_ALIGNED_MIN_PSNR_DB
            # The same check detects a one-pixel shift or a flip.
            assert _psnr(lq, np.roll(small, 1, axis=1)) < _psnr(lq, small) - 3
            assert _psnr(lq, small[:, ::-1]) < LR_GT_ALIGNED_MIN_PSNR_DB


def test_on_the_fly_lr_equals_the_imresize_files(reds):
    from_files = TrainDataset(_cfg(reds), seed=3)
    on_the_fly = TrainDataset(_cfg(reds, lq=False), seed=3)
    for s in (0, 5, 11):
        a, b = from_files[s], on_the_fly[s]
        assert a["key"] == b["key"]
        assert torch.equal(a["lq"], b["lq"]) and torch.equal(a["gt"], b["gt"])


def test_samples_depend_only_on_seed_and_number(reds):
    a, b = TrainDataset(_cfg(reds), seed=5), TrainDataset(_cfg(reds), seed=5)
    assert all(torch.equal(a[s]["gt"], b[s]["gt"]) for s in (7, 2, 7))
    other = TrainDataset(_cfg(reds), seed=6)
    assert any(not torch.equal(a[s]["gt"], other[s]["gt"]) for s in range(4))
    # Each epoch (len(a) samples) visits every (clip, frame) key once, in a fresh order.
    def epoch(e):
        return [a.keys[k] for k in a._order(e)]
    assert sorted(epoch(0)) == sorted(a.keys) and epoch(0) != epoch(1)


def test_without_flips_nothing_is_flipped(reds):
    ds = TrainDataset(_cfg(reds, use_hflip=False, use_rot=False), seed=0)
    assert all(not (p.hflip or p.vflip or p.transpose) for p in map(ds.plan, range(20)))


def test_stream_is_split_across_processes_and_resumes_in_place():
    whole = list(SampleStream(0, 6, batch=2, rank=0, world=1))
    assert whole == list(range(12))
    ranks = [list(SampleStream(0, 6, batch=2, rank=r, world=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == list(range(24))
    assert ranks[1][:2] == [2, 3]  # iteration 0 of rank 1
    resumed = list(SampleStream(0, 3, 2, 1, 2)) + list(SampleStream(3, 6, 2, 1, 2))
    assert resumed == ranks[1]


def test_single_folder_of_frames_is_one_clip():
    clips = find_clips(CALENDAR_GT)
    assert [c.name for c in clips] == ["GT"] and len(clips[0].frames) == 41
    assert clips[0].frames[:3] == ("000.png", "001.png", "002.png")


def test_validation_clip_crop(reds):
    cfg = ValData(dataroot_gt=str(reds / "GT"), dataroot_lq=str(reds / "LR"), clips=("001",),
                  num_frame=2, lq_crop=(4, 8, 64, 64))
    (clip,) = load_val_clips(cfg)
    assert clip.lq.shape == (1, 2, 3, 64, 64) and clip.gt.shape == (2, 256, 256, 3)
    full = read_rgb(reds / "GT" / "001" / "00000001.png")
    assert np.array_equal(clip.gt[1], full[16:272, 32:288])
    on_the_fly = load_val_clips(ValData(**{**cfg.__dict__, "dataroot_lq": None}))[0]
    assert torch.equal(on_the_fly.lq, clip.lq)


def test_data_errors(reds, tmp_path):
    with pytest.raises(DataError, match="shorter than num_frame=5: 000 \\(3\\)"):
        TrainDataset(_cfg(reds, num_frame=5, clips=("000",)), seed=0)
    with pytest.raises(DataError, match="clips \\['999'\\] are not in"):
        find_clips(reds / "GT", clips=("999",))
    (tmp_path / "GT" / "a").mkdir(parents=True)
    (tmp_path / "LR" / "a").mkdir(parents=True)
    gt = read_rgb(CALENDAR_GT / "000.png")
    cv2.imwrite(str(tmp_path / "GT" / "a" / "0.png"), gt)
    with pytest.raises(DataError, match="1 GT frames of clip a have no LR frame"):
        find_clips(tmp_path / "GT", tmp_path / "LR")
    with pytest.raises(DataError, match="is not a folder"):
        find_clips(tmp_path / "absent")
