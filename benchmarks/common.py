"""Helpers the benchmark scripts share: data paths, frame loading, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIRN_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
CALENDAR_LR = SHARED / "data" / "vid4" / "calendar" / "LR_bicubic_matlab"
REFERENCE_WEIGHTS = SHARED / "reference" / "hirn_random_seed1.pth"


def load_frames(folder: Path, limit: int | None = None) -> np.ndarray:
    """PNG frames of a folder, sorted, as ``[T, H, W, 3]`` uint8 RGB."""
    import cv2

    paths = sorted(folder.glob("*.png"))[:limit]
    if not paths:
        sys.exit(f"no PNG frames in {folder}: is ../shared/data present?")
    return np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(name: str, payload: dict, markdown: str) -> Path:
    """Write ``results/NAME.json`` and ``results/NAME.md``; return the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)
    return path
