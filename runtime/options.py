"""``hirn-run``'s options and help: each option maps onto a field of BackendConfig or
RunConfig (runtime/cli.py builds them); the callbacks refuse values that cannot run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import click

from hirn.core.constants import PRECISIONS
from hirn.core.errors import HirnError
from hirn.media.video_writer import CODECS, DEFAULT_CRF
from hirn.runtime.backends.base import BACKENDS, DEFAULT_BATCH
from hirn.runtime.pipeline import DEFAULT_OVERLAP, DEFAULT_WINDOW
from hirn.runtime.tiles import DEFAULT_TILE_OVERLAP, parse_tile

# --fps, frames/s: image folders keep their rate to 1/1001, so slower rates would round to
# 0; encoders and players refuse much faster ones
MIN_FPS, MAX_FPS = 1 / 1000, 10_000

HELP = f"""Upscale INPUT x4 into OUTPUT with HiRN.

\b
  hirn-run video.mp4 -o video_x4.mp4                (the built-in weights)
  hirn-run video.mp4 -o video_x4.mp4 --checkpoint hirn.pth
  hirn-run video.mp4 -o video_x4.mkv --onnx graphs/ --codec ffv1
  hirn-run videos/ -o upscaled/ --checkpoint hirn.pth
  hirn-run demo                (a synthetic clip, no files needed)

INPUT is a video (any container and codec FFmpeg reads) or a folder. A folder
that holds images is one input, a frame sequence in natural name order; a folder
that holds video files (.mp4, .mkv, .mov, .avi, .webm, ...) is a batch: each
video is upscaled into the folder OUTPUT under its own name, outputs finished
by an earlier run are skipped (so a stopped batch resumes; any other file at an
output's name is upscaled again), and under torchrun --nproc-per-node N each
process takes every N-th file.

OUTPUT is a .mp4, .mkv or .mov video (H.264 unless --codec says otherwise), with
the input's frame rate and timestamps, audio, subtitles, chapters, attachments and
tags (a note names what the container cannot hold), or a path without extension
for a folder of PNGs. It appears only when complete; the input is never touched.
Above 8 bits per sample the output keeps the input's bits (H.265 Main10 by
default, FFV1 and PNG at 16 bits); --pix-fmt chooses another format.

INPUT - reads a YUV4MPEG2 stream on standard input and -o - writes one on
standard output (notes, progress and the summary go to standard error):

\b
  ffmpeg -i in.mkv -f yuv4mpegpipe - | hirn-run - -o - | ffmpeg -i - out.mkv

Long videos run in windows of --window frames, each reading --overlap more
frames on either side as context (and at least 16 frames in all, the length of
HiRN's groups). Memory is bounded by the window, not by the length of the video:
it grows with the frames a window reads and their size (measured in
benchmarks/results/window_memory.md): each feature map is dropped after its last
reader, so a window frame holds about one map until its decode, and its output
waits as 8-bit samples. When a window's peak (counted from the same order)
exceeds the free memory (of the GPU, or of this machine), its backward maps are
recomputed from two kept in 16 frames (the same output, one more pass of the
backward branch); without --batch-size, fewer frames are also decoded at a time
when that is what lets a window fit (an information line says each). A window
that still does not fit is refused before any work, with the --batch-size or
--window that fits. With the defaults
({DEFAULT_WINDOW} + 2 x {DEFAULT_OVERLAP} frames) the output stays close to processing the whole
clip at once (benchmarks/results/windowing.md).

Frames too large for even one window (4K on a small GPU, 1080p on a small CPU
machine) run in spatial tiles (--tile, LR pixels), each through the whole model,
blended over --tile-overlap pixels; with --tile auto that happens only when a
window does not fit (without --batch-size: not even decoded one frame at a time),
and an information line names the tile grid
(benchmarks/results/tile_quality.md measures what tiles cost).
"""


def _device(ctx, param, value: str) -> str:
    if not re.fullmatch(r"cpu|(cuda|gpu)(:\d+)?", value):
        raise click.BadParameter(f"{value!r} is not a device: use cpu, cuda or cuda:N "
                                 f"(NVIDIA), gpu or gpu:N (Intel graphics, openvino)")
    return value


def _tile(ctx, param, value: str):
    try:
        return parse_tile(value)
    except HirnError as error:
        raise click.BadParameter(str(error)) from error


def _fps(ctx, param, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"{value} is not a frame rate: give a positive number of "
                                 f"frames per second, e.g. 25 or 29.97")
    if not MIN_FPS <= value <= MAX_FPS:
        raise click.BadParameter(f"{value:g} frames/s is out of range: give a rate from "
                                 f"{MIN_FPS:g} to {MAX_FPS:g}")
    return value




def run_options(command):
    """``hirn-run``'s argument and options, in the order ``--help`` lists them."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


_OPTIONS = [
    click.argument("input", type=click.Path(path_type=Path)),
    click.option("-o", "--output", type=click.Path(path_type=Path),
                 help="video file, PNG folder, or (batch) output folder; demo: its folder "
                      "[default: hirn-demo]"),
    click.option("--checkpoint", type=click.Path(path_type=Path),
                 help="HiRN weights (.pth) for the torch backend; 'default' (also when no "
                      "weights are given): the small built-in weights"),
    click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path),
                 help="a folder from hirn-export onnx, for the openvino (default on the CPU) "
                      "or onnxruntime backend"),
    click.option("--engines", "engines_dir", type=click.Path(path_type=Path),
                 help="a folder of TensorRT engines, for the tensorrt backend"),
    click.option("--backend", type=click.Choice(BACKENDS),
                 help="default: the one that runs the weights given"),
    click.option("--device", default="cpu", show_default=True, callback=_device,
                 help="cpu, cuda or cuda:N (NVIDIA), gpu or gpu:N (Intel graphics, openvino)"),
    click.option("--precision", type=click.Choice(PRECISIONS),
                 help="features in fp16 (CUDA, Intel GPUs) or bf16 (CPUs that compute it "
                      "natively), flows in fp32 [default on the CPU: fp32 (torch, openvino)]; "
                      "onnxruntime runs an ONNX folder in the precision it was exported in"),
    click.option("--compile", "compile_steps", is_flag=True,
                 help="torch backend: compile the step modules with torch.compile (a long "
                      "warm-up, for long videos on a GPU; "
                      "benchmarks/results/torch_backend_cpu.md)"),
    click.option("--cuda-graphs", is_flag=True,
                 help="torch and tensorrt backends on CUDA: replay the steps from CUDA graphs "
                      "(torch: implies --compile)"),
    click.option("--codec", type=click.Choice(CODECS),
                 help="default: h264 for a video, png for a folder; ffv1 is lossless (.mkv)"),
    click.option("--crf", type=click.IntRange(0, 51),
                 help=f"h264/h265 quality, lower is better, 0 is lossless "
                      f"[default: {DEFAULT_CRF}]"),
    click.option("--pix-fmt", "pix_fmt",
                 help="output pixel format, FFmpeg's name (e.g. yuv420p10le, yuv444p, "
                      "gbrp16le, "
                      "rgb48be for 16-bit PNGs) [default: 8 bits, or above 8 bits what the "
                      "input has: H.265 yuv420p10le, FFV1 gbrp16le, PNG rgb48be; a pipe: the "
                      "input's]"),
    click.option("--window", type=click.IntRange(min=1), default=DEFAULT_WINDOW,
                 show_default=True, help="frames written per window"),
    click.option("--overlap", type=click.IntRange(min=0), default=DEFAULT_OVERLAP,
                 show_default=True, help="frames of context read on each side of a window"),
    click.option("--tile", default="auto", show_default=True, callback=_tile,
                 help="spatial tiles, HxW in LR pixels (e.g. 256x320): auto (only when a window "
                      "does not fit in memory) or none"),
    click.option("--tile-overlap", type=click.IntRange(min=0), default=DEFAULT_TILE_OVERLAP,
                 show_default=True, help="LR pixels neighbouring tiles share, blended"),
    click.option("--batch-size", type=click.IntRange(min=1),
                 help="frames per call of the batchable graphs (encode, flow, decode) "
                      f"[default: {DEFAULT_BATCH}, fewer when a window decoded {DEFAULT_BATCH} at "
                      "a time does not fit in memory]"),
    click.option("--threads", type=click.IntRange(min=1),
                 help="CPU threads of the backend [default: all cores]"),
    click.option("--fps", type=float, callback=_fps,
                 help="frame rate of an image-folder input [default: 25]"),
    click.option("--overwrite", is_flag=True, help="replace an existing OUTPUT"),
    click.option("--strict", is_flag=True,
                 help="stop at frames decoded with errors (damage FFmpeg conceals), writing "
                      "nothing [default: a note names them]"),
    click.option("--resume", is_flag=True,
                 help="keep each finished window in a hidden folder beside OUTPUT "
                      "(.NAME.resume/); the same command run again after a stop continues "
                      "from the first unfinished window"),
    click.option("--frames", type=click.IntRange(min=1),
                 help="demo only: length of the synthetic clip [default: 8]"),
]
