"""``hirn-run demo``: the whole pipeline on a synthetic clip, with nothing to download.

It draws a short clip (a textured background panning behind moving shapes and text),
shrinks it 4x with MATLAB's bicubic ``imresize`` (the degradation HiRN is trained for),
writes those frames as the input, upscales them through the same pipeline as ``hirn-run
INPUT -o OUTPUT`` and compares bicubic and HiRN with the original. Without ``--checkpoint``
(or ``--onnx``/``--engines``) it uses the built-in weights, as ``hirn-run`` does
(:mod:`hirn.core.default_weights`).
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from hirn.media.video import open_sink, open_source
from hirn.runtime.backends import BackendConfig
from hirn.runtime.padding import SCALE
from hirn.runtime.pipeline import RunConfig, open_output, upscale
from hirn.runtime.progress import info, progress_bar, summary

DEMO_FRAMES = 8
HR_SIZE = (256, 320)  # height, width of the original; the input is 64x80 (quick on a CPU)
FPS = 12
INPUT_NAME, OUTPUT_NAME, SIDE_BY_SIDE = "input", "upscaled.mp4", "side_by_side.png"
PAN = (3, 5)  # pixels per frame the background moves (down, right)


def synthetic_clip(frames: int = DEMO_FRAMES, size: tuple[int, int] = HR_SIZE,
                   seed: int = 0) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 RGB: fine texture and stripes panning behind a moving disc,
    a turning box and text (deterministic)."""
    import cv2

    height, width = size
    rng = np.random.default_rng(seed)
    pad_y, pad_x = PAN[0] * frames + 1, PAN[1] * frames + 1
    canvas_h, canvas_w = height + pad_y, width + pad_x
    y, x = np.mgrid[0:canvas_h, 0:canvas_w]
    # smooth colour gradient + diagonal stripes + blurred noise: detail at every scale
    base = np.stack([96 + 64 * np.sin(x / 37.0), 96 + 64 * np.cos(y / 29.0),
                     128 + 48 * np.sin((x + y) / 53.0)], axis=-1)
    base += 40 * (((x + 2 * y) // 6) % 2)[..., None]
    noise = cv2.GaussianBlur(rng.normal(0, 28, (canvas_h, canvas_w, 3)), (0, 0), 1.2)
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    for k in range(0, canvas_w, 24):  # a grid of thin lines, aliased when shrunk
        cv2.line(background, (k, 0), (k, canvas_h), (30, 30, 30), 1)
    clip = []
    for t in range(frames):
        top, left = PAN[0] * t, PAN[1] * t
        frame = np.ascontiguousarray(background[top:top + height, left:left + width])
        centre = (int(60 + 18 * t), int(height / 2 - 30 + 30 * np.sin(t / 2)))
        cv2.circle(frame, centre, 34, (230, 70, 40), -1, cv2.LINE_AA)
        cv2.circle(frame, centre, 20, (250, 220, 60), 3, cv2.LINE_AA)
        box = cv2.boxPoints(((width - 90, 80 + 4 * t), (70, 44), 12.0 * t)).astype(np.int32)
        cv2.fillPoly(frame, [box], (40, 90, 200), cv2.LINE_AA)
        cv2.putText(frame, "HiRN x4", (110 - 2 * t, height - 40), cv2.FONT_HERSHEY_DUPLEX,
                    1.4, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(frame, "video super-resolution", (40 + t, height - 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (10, 10, 10), 1, cv2.LINE_AA)
        clip.append(frame)
    return np.stack(clip)


def shrink(clip: np.ndarray) -> np.ndarray:
    """The LR clip: each frame through MATLAB's bicubic imresize at 1/4."""
    from hirn.model.imresize import imresize

    return np.stack([imresize(frame, 1 / SCALE) for frame in clip])


def bicubic(lr: np.ndarray) -> np.ndarray:
    """The baseline: each LR frame enlarged 4x with MATLAB's bicubic imresize."""
    from hirn.model.imresize import imresize

    return np.stack([imresize(frame, SCALE) for frame in lr])


def side_by_side(panels: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """RGB images in a row, 4 white pixels apart, each with its label in a corner."""
    import cv2

    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = []
    for panel, label in zip(panels, labels):
        panel = panel.copy()
        cv2.putText(panel, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(panel, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
        row += [panel, gap]
    return np.concatenate(row[:-1], axis=1)


def run_demo(folder: Path, backend: BackendConfig, frames: int | None = None,
             quiet: bool = False) -> dict:
    """Make the clip, upscale it, write the results into ``folder``; returns the PSNRs."""
    import cv2

    from hirn.runtime.backends import create_runner
    from hirn.runtime.weights import infer_backend
    from hirn.train.metrics import psnr

    frames = frames or DEMO_FRAMES
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    original = synthetic_clip(frames)
    lr = shrink(original)
    height, width = lr.shape[1:3]
    with open_sink(folder / INPUT_NAME, width=width, height=height, fps=FPS, codec="png",
                   overwrite=True) as sink:
        for image in lr:
            sink.write(image)
    info(f"hirn-run demo: {frames} synthetic frames, {width}x{height} -> "
         f"{SCALE * width}x{SCALE * height}", quiet)
    backend = infer_backend(backend)
    runner = create_runner(backend)
    info(f"weights: {backend.weights}; {runner.describe()}", quiet)

    source = open_source(folder / INPUT_NAME, fps=FPS)
    config = RunConfig(codec="h264", overwrite=True, quiet=quiet)
    upscaled: list[np.ndarray] = []
    with open_output(source, folder / OUTPUT_NAME, config) as sink:
        with progress_bar(frames, "demo", quiet) as bar:
            stats = upscale(source, sink, runner, config, batch_size=backend.batch_size,
                            progress=bar, on_frame=upscaled.append)
    hirn = np.stack(upscaled)
    baseline = bicubic(lr)
    scores = {"bicubic": float(np.mean([psnr(b, o) for b, o in zip(baseline, original)])),
              "hirn": float(np.mean([psnr(h, o) for h, o in zip(hirn, original)]))}
    middle = frames // 2
    picture = side_by_side([baseline[middle], hirn[middle], original[middle]],
                           ["bicubic", "HiRN", "original"])
    cv2.imwrite(str(folder / SIDE_BY_SIDE), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    click.echo(f"PSNR against the original (RGB, mean of {frames} frames): bicubic "
               f"{scores['bicubic']:.2f} dB, HiRN {scores['hirn']:.2f} dB "
               f"({scores['hirn'] - scores['bicubic']:+.2f} dB)")
    click.echo(f"wrote {folder / OUTPUT_NAME} (the x4 video), {folder / SIDE_BY_SIDE} "
               f"(bicubic | HiRN | original, frame {middle}) and {folder / INPUT_NAME}/ "
               f"(the {width}x{height} input frames)")
    click.echo(summary(stats.frames, stats.seconds, folder / OUTPUT_NAME))
    return scores
