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


def plot_lines(path: Path, series: dict[str, tuple[list, list]], title: str, xlabel: str,
               ylabel: str, size: tuple[int, int] = (1000, 520)) -> Path:
    """A small line chart as PNG, drawn with OpenCV (no plotting library needed)."""
    import cv2

    width, height = size
    left, right, top, bottom = 80, 300, 40, 60
    img = np.full((height, width, 3), 255, np.uint8)
    xs = [x for xs_, _ in series.values() for x in xs_]
    ys = [y for _, ys_ in series.values() for y in ys_ if np.isfinite(y)]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x, y):
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = top + (y1 - y) / (y1 - y0) * (height - top - bottom)
        return int(round(px)), int(round(py))

    black, grey = (0, 0, 0), (200, 200, 200)
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        _, py = to_px(x0, yv)
        cv2.line(img, (left, py), (width - right, py), grey, 1)
        cv2.putText(img, f"{yv:.4g}", (5, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black, 1)
    for i in range(6):
        xv = x0 + (x1 - x0) * i / 5
        px, _ = to_px(xv, y0)
        cv2.putText(img, f"{xv:.4g}", (px - 10, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, black, 1)
    cv2.rectangle(img, (left, top), (width - right, height - bottom), black, 1)
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for k, (name, (xs_, ys_)) in enumerate(series.items()):
        color = colors[k % len(colors)][::-1]
        points = [to_px(x, y) for x, y in zip(xs_, ys_) if np.isfinite(y)]
        for a, b in zip(points, points[1:]):
            cv2.line(img, a, b, color, 2, cv2.LINE_AA)
        ly = top + 20 + 20 * k
        cv2.line(img, (width - right + 10, ly), (width - right + 30, ly), color, 2)
        cv2.putText(img, name, (width - right + 35, ly + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    black, 1)
    cv2.putText(img, title, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, black, 1)
    cv2.putText(img, xlabel, (width // 2 - 40, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                black, 1)
    cv2.putText(img, ylabel, (5, top - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
