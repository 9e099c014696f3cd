"""``hirn-eval``: the paper's evaluation protocol on Vid4 and REDS4.

An upscaler is any callable ``upscale(lr) -> sr`` taking a whole clip
``[T, H, W, 3]`` uint8 RGB and returning ``[T, 4H, 4W, 3]`` uint8 RGB (already
rounded). Clips are scored frame by frame (Vid4 on BT.601 Y, REDS4 on RGB, no
border crop), averaged per clip, then over clips.

Data layout: ``DATA_ROOT/<dataset>/<clip>/GT/*.png`` and, optionally, LR frames
of the same names in ``<clip>/LR_bicubic_matlab`` (or ``LR_bicubic``, ``LR``);
without them the LR frames are made with MATLAB-style ``imresize(GT, 1/4)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from hirn.core.constants import SCALE
from hirn.core.default_weights import DEFAULT_CHECKPOINT, DEFAULT_NAME, resolve_checkpoint
from hirn.core.errors import DatasetError, HirnError
from hirn.core.files import atomic_write_text
from hirn.core.logs import logging_options
from hirn.model.imresize import imresize

from .frames import FRAME_SUFFIXES, list_frames, read_rgb
from .metrics import psnr, rgb_to_y, ssim

LR_FOLDERS = ("LR_bicubic_matlab", "LR_bicubic", "LR")  # first one present is used
logger = logging.getLogger(__name__)

Upscaler = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DatasetSpec:
    clips: tuple[str, ...]  # the benchmark's clips, in the published order
    y_channel: bool         # score BT.601 Y (else RGB)


DATASETS = {
    "vid4": DatasetSpec(("calendar", "city", "foliage", "walk"), y_channel=True),
    "reds4": DatasetSpec(("000", "011", "015", "020"), y_channel=False),
}


@dataclass
class ClipScore:
    name: str
    frames: int
    lr_source: str  # LR folder name, or how the LR frames were made
    psnr: float     # mean over frames, dB
    ssim: float
    psnr_per_frame: list[float] = field(default_factory=list)
    ssim_per_frame: list[float] = field(default_factory=list)


@dataclass
class Report:
    dataset: str
    method: str
    channel: str  # "Y (BT.601)" or "RGB"
    clips: list[ClipScore]
    options: dict = field(default_factory=dict)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([c.psnr for c in self.clips]))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean([c.ssim for c in self.clips]))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"] = {"psnr": self.mean_psnr, "ssim": self.mean_ssim}
        return out


def default_data_root() -> Path | None:
    """``$HIRN_SHARED/data``, else ``../shared/data`` next to the repository, if present."""
    shared = os.environ.get("HIRN_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[1].parent / "shared"
    return root / "data" if (root / "data").is_dir() else None


def dataset_dir(data_root: str | os.PathLike | None, dataset: str) -> Path:
    """``data_root/<dataset>``, checked."""
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    if data_root is None:
        raise DatasetError("no data root: pass --data-root DIR (holding "
                           f"{dataset}/<clip>/GT/*.png); ../shared/data was not found")
    folder = Path(data_root) / dataset
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory: the data root must hold "
                           f"{dataset}/<clip>/GT/*.png")
    return folder


def available_clips(folder: Path) -> list[str]:
    """Clip folders (those with a ``GT`` folder) under a dataset folder."""
    return sorted(p.name for p in folder.iterdir() if (p / "GT").is_dir())


def select_clips(folder: Path, dataset: str, clips: Sequence[str] | None) -> list[str]:
    """The requested clips (checked), or the benchmark's clips that are present."""
    present = available_clips(folder)
    if clips:
        unknown = [c for c in clips if c not in present]
        if unknown:
            raise DatasetError(f"unknown clip(s) {unknown} in {folder}; present: {present}")
        return list(clips)
    chosen = [c for c in DATASETS[dataset].clips if c in present]
    if not chosen:
        raise DatasetError(f"none of the {dataset} clips {list(DATASETS[dataset].clips)} is in "
                           f"{folder} (found {present}); pass --clips to pick others")
    return chosen


def _center_crop(size: tuple[int, int], crop: tuple[int, int]) -> tuple[slice, slice]:
    (h, w), (ch, cw) = size, crop
    top, left = (h - ch) // 2, (w - cw) // 2
    return slice(top, top + ch), slice(left, left + cw)


def _stack(frames: list[np.ndarray], folder: Path) -> np.ndarray:
    sizes = sorted({f.shape[:2] for f in frames})
    if len(sizes) > 1:
        raise DatasetError(f"frames in {folder} differ in size: {sizes}; a clip needs one size")
    return np.stack(frames)


def load_clip(folder: Path, max_frames: int | None = None,
              crop: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """GT and LR frames of one clip.

    Args:
        folder: the clip folder (holding ``GT/``).
        max_frames: keep the first frames only.
        crop: ``(h, w)`` of a centred LR crop; GT is cropped to the matching
            ``(4h, 4w)`` window.

    Returns:
        ``(gt [T, 4H, 4W, 3], lr [T, H, W, 3], lr_source)``, uint8 RGB.
    """
    names = [folder / "GT" / name for name in list_frames(folder / "GT")]
    if not names:
        raise DatasetError(f"no frames ({'/'.join(FRAME_SUFFIXES)}) in {folder / 'GT'}")
    names = names[:max_frames] if max_frames else names
    gt = _stack([read_rgb(p) for p in names], folder / "GT")
    lr_folder = next((folder / n for n in LR_FOLDERS if (folder / n).is_dir()), None)
    if lr_folder is not None:
        missing = [p.name for p in names if not (lr_folder / p.name).is_file()]
        if missing:
            raise DatasetError(f"{lr_folder} lacks {len(missing)} frame(s) of GT, e.g. "
                               f"{missing[0]}")
        lr = _stack([read_rgb(lr_folder / p.name) for p in names], lr_folder)
        source = lr_folder.name
    else:
        if gt.shape[1] % SCALE or gt.shape[2] % SCALE:
            raise DatasetError(f"GT frames in {folder / 'GT'} are {gt.shape[1]}x{gt.shape[2]}, "
                               f"not divisible by {SCALE}: crop them or provide LR frames")
        lr, source = np.stack([imresize(f, 1 / SCALE) for f in gt]), "imresize(GT, 1/4)"
    if lr.shape[1] * SCALE != gt.shape[1] or lr.shape[2] * SCALE != gt.shape[2]:
        raise DatasetError(f"LR frames in {folder} are {lr.shape[1]}x{lr.shape[2]} but GT frames "
                           f"are {gt.shape[1]}x{gt.shape[2]}: expected exactly x{SCALE}")
    if crop is not None:
        if crop[0] > lr.shape[1] or crop[1] > lr.shape[2] or min(crop) < 1:
            raise DatasetError(f"crop {crop[0]}x{crop[1]} does not fit LR frames of "
                               f"{lr.shape[1]}x{lr.shape[2]} in {folder}")
        ys, xs = _center_crop(lr.shape[1:3], crop)
        lr = lr[:, ys, xs]
        gt = gt[:, ys.start * SCALE:ys.stop * SCALE, xs.start * SCALE:xs.stop * SCALE]
    return np.ascontiguousarray(gt), np.ascontiguousarray(lr), source


def score_clip(sr: np.ndarray, gt: np.ndarray, y_channel: bool) -> tuple[list[float], list[float]]:
    """Per-frame PSNR and SSIM of uint8 ``sr`` vs ``gt``, both ``[T, H, W, 3]``."""
    if sr.shape != gt.shape or sr.dtype != np.uint8:
        raise HirnError(f"the upscaler returned {sr.dtype} {list(sr.shape)}; expected uint8 "
                        f"{list(gt.shape)} (x{SCALE} of the LR frames, rounded)")
    psnrs, ssims = [], []
    for s, g in zip(sr, gt):
        if y_channel:
            s, g = rgb_to_y(s), rgb_to_y(g)
        psnrs.append(psnr(s, g))
        ssims.append(ssim(s, g))
    return psnrs, ssims


def evaluate(dataset: str, data_root: str | os.PathLike | None, upscale: Upscaler,
             method: str, clips: Sequence[str] | None = None, max_frames: int | None = None,
             crop: tuple[int, int] | None = None) -> Report:
    """Score ``upscale`` on a dataset with the paper's protocol (each clip logged as read)."""
    folder = dataset_dir(data_root, dataset)
    spec = DATASETS[dataset]
    scores = []
    for name in select_clips(folder, dataset, clips):
        gt, lr, source = load_clip(folder / name, max_frames, crop)
        logger.info("%s: %d frames %dx%d (LR from %s)", name, len(lr), lr.shape[1], lr.shape[2],
                    source)
        psnrs, ssims = score_clip(upscale(lr), gt, spec.y_channel)
        scores.append(ClipScore(name, len(lr), source, float(np.mean(psnrs)),
                                float(np.mean(ssims)), psnrs, ssims))
    options = {"data_root": str(data_root), "max_frames": max_frames,
               "crop": list(crop) if crop else None}
    return Report(dataset, method, "Y (BT.601)" if spec.y_channel else "RGB", scores, options)


def bicubic_upscaler() -> Upscaler:
    """MATLAB-style bicubic x4 (``imresize(lr, 4)``) per frame."""
    def upscale(lr: np.ndarray) -> np.ndarray:
        return np.stack([imresize(frame, SCALE) for frame in lr])
    return upscale


def checkpoint_upscaler(path: str | os.PathLike, device: str = "cpu",
                        param_key: str | None = None) -> Upscaler:
    """HiRN from a checkpoint; each clip is fed whole, output clamped and rounded to uint8."""
    import torch

    from hirn.model.checkpoint import load_model

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise HirnError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HirnError(f"device {device!r} asked for, but PyTorch sees no CUDA GPU; "
                        "use --device cpu")
    model = load_model(path, param_key=param_key, map_location=dev)

    def upscale(lr: np.ndarray) -> np.ndarray:
        clip = torch.from_numpy(lr).to(dev).permute(0, 3, 1, 2).float().div(255).unsqueeze(0)
        with torch.no_grad():
            sr = model(clip)[0]
        sr = sr.clamp(0, 1).mul(255).round().to(torch.uint8)
        return sr.permute(0, 2, 3, 1).cpu().numpy()
    return upscale


def make_upscaler(method: str, checkpoint: str | None, device: str,
                  param_key: str | None) -> tuple[str, Upscaler]:
    """The one place mapping CLI choices to an upscaler: ``(method name, upscaler)``."""
    if checkpoint is not None:
        path = resolve_checkpoint(checkpoint)  # "default": the built-in weights
        name = DEFAULT_NAME if path == DEFAULT_CHECKPOINT else path.name
        return f"hirn:{name}", checkpoint_upscaler(path, device, param_key)
    if method == "bicubic":
        return "bicubic", bicubic_upscaler()
    raise HirnError(f"unknown method {method!r}; pass --method bicubic or --checkpoint FILE")


def format_table(report: Report) -> str:
    """Per-clip Markdown table with the mean over clips."""
    rows = ["| clip | frames | PSNR (dB) | SSIM |", "| --- | ---: | ---: | ---: |"]
    rows += [f"| {c.name} | {c.frames} | {c.psnr:.2f} | {c.ssim:.4f} |" for c in report.clips]
    rows.append(f"| **mean** | {sum(c.frames for c in report.clips)} | "
                f"**{report.mean_psnr:.2f}** | **{report.mean_ssim:.4f}** |")
    return "\n".join(rows)


def format_markdown(report: Report) -> str:
    sources = sorted({c.lr_source for c in report.clips})
    return (f"# {report.dataset}: {report.method}\n\n"
            f"Metric on {report.channel}, outputs rounded to uint8, no border crop; mean per "
            f"clip, then over clips. LR frames: {', '.join(sources)}. Options: "
            f"{json.dumps(report.options)}.\n\n{format_table(report)}\n")


def write_report(report: Report, prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``PREFIX.json`` and ``PREFIX.md``; return both paths."""
    return (atomic_write_text(f"{prefix}.json", json.dumps(report.to_dict(), indent=1) + "\n"),
            atomic_write_text(f"{prefix}.md", format_markdown(report)))


def _parse_crop(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: expected N or HxW in LR pixels, e.g. 64 or 64x96")
    return (parts[0], parts[-1])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Choice(sorted(DATASETS)), default="vid4", show_default=True)
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="folder holding <dataset>/<clip>/GT (default: ../shared/data next to the repo)")
@click.option("--clips", default=None, help="comma-separated clips (default: all present)")
@click.option("--method", type=click.Choice(["bicubic"]), default=None,
              help="a reference upscaler instead of a checkpoint")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="HiRN .pth checkpoint, or 'default' for the built-in weights")
@click.option("--param-key", type=click.Choice(["params", "params_ema"]), default=None,
              help="weights to take from the checkpoint (default: params)")
@click.option("--max-frames", type=click.IntRange(min=1), default=None,
              help="score the first N frames of each clip only")
@click.option("--crop", callback=_parse_crop, default=None,
              help="centred LR crop, N or HxW (GT cropped to match)")
@click.option("--device", default="cpu", show_default=True, help="torch device for --checkpoint")
@click.option("-o", "--output", default=None, help="write OUTPUT.json and OUTPUT.md")
@logging_options
def main(dataset, data_root, clips, method, checkpoint, param_key, max_frames, crop, device,
         output, quiet) -> None:
    """Score an upscaler with the paper's protocol (Vid4: Y channel; REDS4: RGB)."""
    if (method is None) == (checkpoint is None):
        raise click.UsageError("pass exactly one of --method bicubic and --checkpoint FILE")
    root = data_root if data_root is not None else default_data_root()
    clip_list = [c.strip() for c in clips.split(",") if c.strip()] if clips else None
    try:
        name, upscale = make_upscaler(method, checkpoint, device, param_key)
        report = evaluate(dataset, root, upscale, name, clip_list, max_frames, crop)
        written = write_report(report, output) if output else ()
    except HirnError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from exc
    click.echo(f"{report.dataset} ({report.channel}), {report.method}:")
    click.echo(format_table(report))
    for path in written:
        click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    main()
