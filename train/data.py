"""Training and validation data: clips of numbered frames, random aligned crops.

Two layouts, chosen by ``dataroot_lq``:

- REDS: ``dataroot_gt/<clip>/<frame>.png`` and the x4 smaller LR frames of the
  same names in ``dataroot_lq/<clip>/``.
- Plain folders of clips (GT only, ``dataroot_lq: null``): the LR frames are
  made on the fly with MATLAB's ``imresize(GT, 1/4)``, computed only over the
  window a crop needs but equal to cropping the full-frame result.

A root that holds frames directly is one clip named after the folder.

Every sample is a pure function of ``(seed, sample number)``: which clip (a
fresh permutation per epoch), the start frame, the crop and the flips. So a
resumed or multi-process run sees exactly the data an uninterrupted one does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from hirn.core.errors import DataError

from .config import REDS4_CLIPS, SCALE, TrainData, ValData
from .frames import FRAME_SUFFIXES, list_frames, read_rgb


@dataclass(frozen=True)
class Clip:
    name: str
    gt_dir: Path
    lq_dir: Path | None      # None: LR made on the fly
    frames: tuple[str, ...]  # file names, in time order


def find_clips(dataroot_gt: str | Path, dataroot_lq: str | Path | None = None, *,
               clips: tuple[str, ...] | None = None, meta_info_file: str | None = None,
               exclude: tuple[str, ...] = ()) -> list[Clip]:
    """The clips under a data root, checked against the LR root when there is one."""
    root = Path(dataroot_gt)
    if not root.is_dir():
        raise DataError(f"dataroot_gt {root} is not a folder")
    lq_root = None if dataroot_lq is None else Path(dataroot_lq)
    if lq_root is not None and not lq_root.is_dir():
        raise DataError(f"dataroot_lq {lq_root} is not a folder")
    if list_frames(root):  # the root is itself one clip
        names = [root.name]
        gt_dirs = {root.name: root}
        lq_dirs = {root.name: lq_root}
    else:
        if meta_info_file is not None:
            lines = Path(meta_info_file).read_text().splitlines()
            names = [line.split()[0] for line in lines if line.strip()]
        else:
            names = sorted(p.name for p in root.iterdir() if p.is_dir())
        gt_dirs = {n: root / n for n in names}
        lq_dirs = {n: None if lq_root is None else lq_root / n for n in names}
    if clips is not None:
        missing = [c for c in clips if c not in gt_dirs]
        if missing:
            raise DataError(f"clips {missing} are not in {root} (it has {names[:8]}"
                            f"{' ...' if len(names) > 8 else ''})")
        names = list(clips)
    names = [n for n in names if n not in exclude]
    out = []
    for name in names:
        gt_dir, lq_dir = gt_dirs[name], lq_dirs[name]
        if not gt_dir.is_dir():
            raise DataError(f"clip folder {gt_dir} is missing")
        frames = list_frames(gt_dir)
        if not frames:
            raise DataError(f"clip folder {gt_dir} holds no frames ({', '.join(FRAME_SUFFIXES)})")
        if lq_dir is not None:
            lq_frames = set(list_frames(lq_dir)) if lq_dir.is_dir() else set()
            absent = [f for f in frames if f not in lq_frames]
            if absent:
                raise DataError(f"{len(absent)} GT frames of clip {name} have no LR frame in "
                                f"{lq_dir}, e.g. {absent[0]}")
        out.append(Clip(name, gt_dir, lq_dir, frames))
    if not out:
        raise DataError(f"no clips left under {root} (excluded: {list(exclude)})")
    return out


def lr_window(gt: np.ndarray, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    """``imresize(gt, 1/4)[top:top+h, left:left+w]`` computed from the GT rows/cols it needs.

    Args:
        gt: ``[H, W, 3]`` uint8 full GT frame.
        top, left: crop corner in LR pixels; ``size``: ``(h, w)`` in LR pixels.

    Returns:
        ``[h, w, 3]`` uint8, equal to cropping MATLAB's full-frame result.
    """
    from hirn.model.imresize import contributions, output_size

    scale = 1 / SCALE
    out_h, out_w = output_size(gt.shape[:2], scale)
    h, w = size
    wh, ih = contributions(gt.shape[0], out_h, scale)
    ww, iw = contributions(gt.shape[1], out_w, scale)
    wh, ih = wh[top:top + h], ih[top:top + h]
    ww, iw = ww[left:left + w], iw[left:left + w]
    cols, iw_local = np.unique(iw, return_inverse=True)
    iw_local = iw_local.reshape(iw.shape)
    x = gt[:, cols].astype(np.float64)
    # Same operations, in the same tap order, as the full-frame passes (height, then width).
    rows = np.zeros((h,) + x.shape[1:])
    for p in range(wh.shape[1]):
        rows += wh[:, p].reshape(-1, 1, 1) * x[ih[:, p]]
    out = np.zeros((h, w, x.shape[2]))
    for p in range(ww.shape[1]):
        out += ww[:, p].reshape(1, -1, 1) * rows[:, iw_local[:, p]]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def augment(frames: list[np.ndarray], hflip: bool, vflip: bool, transpose: bool) -> list:
    """The same flips / transpose for every ``[H, W, C]`` frame (BasicSR's ``augment``)."""
    out = []
    for f in frames:
        if hflip:
            f = f[:, ::-1]
        if vflip:
            f = f[::-1]
        if transpose:
            f = f.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(f))
    return out


def to_tensor(frames: list[np.ndarray]) -> Tensor:
    """``T x [H, W, 3]`` uint8 -> ``[T, 3, H, W]`` float32 in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)


@dataclass(frozen=True)
class SamplePlan:
    clip: int         # index into ``TrainDataset.clips``
    start: int        # first frame
    top: int          # crop corner, LR pixels (GT: x4)
    left: int
    hflip: bool       # then vertical flip, then transpose (every frame alike)
    vflip: bool
    transpose: bool


class TrainDataset(Dataset):
    """Random crops of ``num_frame`` consecutive frames, indexed by global sample number.

    One epoch visits every (clip, frame) key once in a seeded random order; a key
    starts its sample at its frame, or at a random frame when too few follow
    (BasicSR's REDS recipe). ``dataset[s]`` returns ``{"lq": [T, 3, g/4, g/4],
    "gt": [T, 3, g, g], "key": "clip/frame"}`` for GT crop size ``g``.
    """

    def __init__(self, cfg: TrainData, seed: int):
        self.cfg, self.seed = cfg, seed
        exclude = REDS4_CLIPS if cfg.val_partition == "REDS4" else ()
        self.clips = find_clips(cfg.dataroot_gt, cfg.dataroot_lq, clips=cfg.clips,
                                meta_info_file=cfg.meta_info_file, exclude=exclude)
        short = [f"{c.name} ({len(c.frames)})" for c in self.clips
                 if len(c.frames) < cfg.num_frame]
        if short:
            raise DataError(f"clips shorter than num_frame={cfg.num_frame}: {', '.join(short)}")
        self.keys = [(i, f) for i, c in enumerate(self.clips) for f in range(len(c.frames))]
        self._sizes: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    @functools.lru_cache(maxsize=2)  # noqa: B019 - tiny, lives as long as the dataset
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch, 1)).permutation(len(self.keys))

    def plan(self, sample: int) -> SamplePlan:
        """Which frames, crop and flips sample number ``sample`` uses."""
        cfg = self.cfg
        epoch, pos = divmod(int(sample), len(self.keys))
        clip_idx, start = self.keys[self._order(epoch)[pos]]
        clip = self.clips[clip_idx]
        rng = np.random.default_rng((self.seed, int(sample), 2))
        last_start = len(clip.frames) - cfg.num_frame
        if start > last_start:
            start = int(rng.integers(0, last_start + 1))
        gh, gw = self._size(clip)
        lq_size = cfg.gt_size // SCALE
        lh, lw = -(-gh // SCALE), -(-gw // SCALE)
        if lh < lq_size or lw < lq_size:
            raise DataError(f"frames of clip {clip.name} ({gh}x{gw}) are smaller than the "
                            f"GT crop gt_size={cfg.gt_size}")
        top = int(rng.integers(0, lh - lq_size + 1))
        left = int(rng.integers(0, lw - lq_size + 1))
        flips = (cfg.use_hflip and bool(rng.random() < 0.5),
                 cfg.use_rot and bool(rng.random() < 0.5), cfg.use_rot and bool(rng.random() < 0.5))
        return SamplePlan(clip_idx, start, top, left, *flips)

    def _size(self, clip: Clip) -> tuple[int, int]:
        if clip.name not in self._sizes:
            self._sizes[clip.name] = read_rgb(clip.gt_dir / clip.frames[0]).shape[:2]
        return self._sizes[clip.name]

    def __getitem__(self, sample: int) -> dict:
        p, cfg = self.plan(sample), self.cfg
        clip = self.clips[p.clip]
        names = clip.frames[p.start:p.start + cfg.num_frame]
        lq_size, gt_size, top, left = cfg.gt_size // SCALE, cfg.gt_size, p.top, p.left
        gt_full = [read_rgb(clip.gt_dir / n) for n in names]
        lh, lw = -(-gt_full[0].shape[0] // SCALE), -(-gt_full[0].shape[1] // SCALE)
        if clip.lq_dir is None:
            lq = [lr_window(f, top, left, (lq_size, lq_size)) for f in gt_full]
        else:
            lq = []
            for n in names:
                f = read_rgb(clip.lq_dir / n)
                if f.shape[:2] != (lh, lw):
                    raise DataError(f"LR frame {clip.lq_dir / n} is {f.shape[0]}x{f.shape[1]}; "
                                    f"expected {lh}x{lw} (GT / {SCALE})")
                lq.append(f[top:top + lq_size, left:left + lq_size])
        gt = [f[SCALE * top:SCALE * top + gt_size, SCALE * left:SCALE * left + gt_size]
              for f in gt_full]
        flips = (p.hflip, p.vflip, p.transpose)
        return {"lq": to_tensor(augment(lq, *flips)), "gt": to_tensor(augment(gt, *flips)),
                "key": f"{clip.name}/{names[0]}"}


class SampleStream(Sampler):
    """Global sample numbers for one process, iteration by iteration.

    Iteration ``i`` (0-based) of process ``rank`` out of ``world`` reads samples
    ``(i * world + rank) * batch + j`` for ``j < batch``: disjoint across
    processes, and the same for any split of the run into resumed parts.
    """

    def __init__(self, start_iter: int, total_iter: int, batch: int, rank: int = 0,
                 world: int = 1):
        self.start, self.total = start_iter, total_iter
        self.batch, self.rank, self.world = batch, rank, world

    def __iter__(self) -> Iterator[int]:
        for i in range(self.start, self.total):
            base = (i * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)

    def __len__(self) -> int:
        return (self.total - self.start) * self.batch


@dataclass
class ValClip:
    name: str
    lq: Tensor        # [1, T, 3, h, w] float in [0, 1]
    gt: np.ndarray    # [T, 4h, 4w, 3] uint8 RGB


def load_val_clips(cfg: ValData) -> list[ValClip]:
    """The validation clips, cropped as configured, kept in memory."""
    from hirn.model.imresize import imresize

    out = []
    for clip in find_clips(cfg.dataroot_gt, cfg.dataroot_lq, clips=cfg.clips):
        names = clip.frames if cfg.num_frame < 0 else clip.frames[:cfg.num_frame]
        gt = [read_rgb(clip.gt_dir / n) for n in names]
        if clip.lq_dir is None:
            lq = [imresize(f, 1 / SCALE) for f in gt]
        else:
            lq = [read_rgb(clip.lq_dir / n) for n in names]
        if lq[0].shape[0] * SCALE != gt[0].shape[0] or lq[0].shape[1] * SCALE != gt[0].shape[1]:
            raise DataError(f"validation clip {clip.name}: LR {lq[0].shape[:2]} is not GT "
                            f"{gt[0].shape[:2]} / {SCALE}; crop GT frames to a multiple of 4")
        if cfg.lq_crop is not None:
            t, le, h, w = cfg.lq_crop
            if t + h > lq[0].shape[0] or le + w > lq[0].shape[1]:
                raise DataError(f"datasets.val.lq_crop {list(cfg.lq_crop)} exceeds the LR "
                                f"frames of clip {clip.name} ({lq[0].shape[0]}x{lq[0].shape[1]})")
            lq = [f[t:t + h, le:le + w] for f in lq]
            s = SCALE
            gt = [f[s * t:s * (t + h), s * le:s * (le + w)] for f in gt]
        out.append(ValClip(clip.name, to_tensor(lq).unsqueeze(0), np.stack(gt)))
    return out
