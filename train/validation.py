"""Validation during training: the configured metrics of the model, or of bicubic
upscaling, on clips held in memory (``data.load_val_clips``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .config import Config
from .data import ValClip


def to_uint8(frames: Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` float -> ``[T, H, W, 3]`` uint8, clamped and rounded."""
    return (frames.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu(
    ).numpy()


def score(sr: np.ndarray, gt: np.ndarray, cfg: Config) -> dict[str, float]:
    """Each configured metric on ``[T, H, W, 3]`` uint8 clips: mean over frames."""
    from .metrics import psnr, rgb_to_y, ssim

    out = {}
    for name, m in cfg.val.metrics.items():
        fn = psnr if m.type == "calculate_psnr" else ssim
        values = []
        for a, b in zip(sr, gt):
            if m.test_y_channel:
                a, b = rgb_to_y(a), rgb_to_y(b)
            values.append(fn(a, b, crop_border=m.crop_border))
        out[name] = float(np.mean(values))
    return out


@torch.no_grad()
def validate(model: nn.Module, clips: list[ValClip], cfg: Config,
             device: torch.device) -> dict[str, float]:
    """Metrics of ``model`` (FP32, eval mode) per clip, then averaged over clips."""
    was_training = model.training
    model.eval()
    per_clip = []
    for clip in clips:
        sr = model(clip.lq.to(device))[0]
        per_clip.append(score(to_uint8(sr), clip.gt, cfg))
    model.train(was_training)
    return {k: float(np.mean([c[k] for c in per_clip])) for k in per_clip[0]}


def bicubic_scores(clips: list[ValClip], cfg: Config) -> dict[str, float]:
    """The same metrics for MATLAB bicubic x4 upscaling of the validation LR frames."""
    from hirn.model.imresize import imresize

    per_clip = []
    for clip in clips:
        lq = to_uint8(clip.lq[0])
        per_clip.append(score(np.stack([imresize(f, 4) for f in lq]), clip.gt, cfg))
    return {k: float(np.mean([c[k] for c in per_clip])) for k in per_clip[0]}
