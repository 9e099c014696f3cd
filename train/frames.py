"""Frame files: which images a folder holds, in time order, and reading one as RGB.

Training, validation and ``hirn-eval`` read frames through here, so that they order a folder
the same way (and the same way as ``hirn-run``: :func:`hirn.core.files.natural_key`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hirn.core.errors import DataError
from hirn.core.files import natural_key

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def list_frames(folder: Path) -> tuple[str, ...]:
    """Image file names in ``folder``, in natural order (``frame2`` before ``frame10``)."""
    names = [p.name for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
    return tuple(sorted(names, key=natural_key))


def read_rgb(path: Path) -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 RGB (8-bit, alpha dropped, gray expanded)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}: missing, empty or not an image file")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
