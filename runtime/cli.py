"""``hirn-run``: upscale videos x4 with HiRN, in bounded memory, with clear errors."""

from __future__ import annotations

import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_HUNG_UP = 129  # 128 + SIGHUP: the terminal was closed
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _interrupted_while_loading(signum, frame):
    sys.stderr.write("\ninterrupted (Ctrl-C) while hirn-run was starting: nothing was "
                     "written\n")
    raise SystemExit(EXIT_INTERRUPTED)


# Ctrl-C while the modules below load (a second or more on a cold disk) would print a
# traceback of the import machinery: end with one line instead. Only in the hirn-run
# process itself (a console script, or python -m), never in a program that imports this
# module; main() hands Ctrl-C back to Python once it runs.
if __name__ == "__main__" or (sys.argv and sys.argv[0].endswith("hirn-run")):
    signal.signal(signal.SIGINT, _interrupted_while_loading)

import errno  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from hirn.core.constants import PRECISIONS  # noqa: E402
from hirn.core.errors import HirnError, OutputExistsError  # noqa: E402
from hirn.core.logs import logging_options  # noqa: E402
from hirn.media.video_writer import CODECS, DEFAULT_CRF  # noqa: E402
from hirn.runtime.backends.base import BACKENDS, DEFAULT_BATCH, BackendConfig  # noqa: E402
from hirn.runtime.pipeline import (  # noqa: E402
    DEFAULT_OVERLAP,
    DEFAULT_WINDOW,
    RunConfig,
    is_out_of_memory,
)
from hirn.runtime.tiles import DEFAULT_TILE_OVERLAP, parse_tile  # noqa: E402

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


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@click.argument("input", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="video file, PNG folder, or (batch) output folder; demo: its folder "
                   "[default: hirn-demo]")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="HiRN weights (.pth) for the torch backend; 'default' (also when no "
                   "weights are given): the small built-in weights")
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path),
              help="a folder from hirn-export onnx, for the openvino (default on the CPU) "
                   "or onnxruntime backend")
@click.option("--engines", "engines_dir", type=click.Path(path_type=Path),
              help="a folder of TensorRT engines, for the tensorrt backend")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="default: the one that runs the weights given")
@click.option("--device", default="cpu", show_default=True, callback=_device,
              help="cpu, cuda or cuda:N (NVIDIA), gpu or gpu:N (Intel graphics, openvino)")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="features in fp16 (CUDA, Intel GPUs) or bf16 (CPUs that compute it "
                   "natively), flows in fp32 [default on the CPU: bf16 where the CPU has it "
                   "(torch, openvino), else fp32]; onnxruntime runs an ONNX folder in the "
                   "precision it was exported in")
@click.option("--compile", "compile_steps", is_flag=True,
              help="torch backend: compile the step modules with torch.compile (a long "
                   "warm-up, for long videos on a GPU; benchmarks/results/torch_backend_cpu.md)")
@click.option("--cuda-graphs", is_flag=True,
              help="torch and tensorrt backends on CUDA: replay the steps from CUDA graphs "
                   "(torch: implies --compile)")
@click.option("--codec", type=click.Choice(CODECS),
              help="default: h264 for a video, png for a folder; ffv1 is lossless (.mkv)")
@click.option("--crf", type=click.IntRange(0, 51),
              help=f"h264/h265 quality, lower is better, 0 is lossless [default: {DEFAULT_CRF}]")
@click.option("--pix-fmt", "pix_fmt",
              help="output pixel format, FFmpeg's name (e.g. yuv420p10le, yuv444p, gbrp16le, "
                   "rgb48be for 16-bit PNGs) [default: 8 bits, or above 8 bits what the "
                   "input has: H.265 yuv420p10le, FFV1 gbrp16le, PNG rgb48be; a pipe: the "
                   "input's]")
@click.option("--window", type=click.IntRange(min=1), default=DEFAULT_WINDOW,
              show_default=True, help="frames written per window")
@click.option("--overlap", type=click.IntRange(min=0), default=DEFAULT_OVERLAP,
              show_default=True, help="frames of context read on each side of a window")
@click.option("--tile", default="auto", show_default=True, callback=_tile,
              help="spatial tiles, HxW in LR pixels (e.g. 256x320): auto (only when a window "
                   "does not fit in memory) or none")
@click.option("--tile-overlap", type=click.IntRange(min=0), default=DEFAULT_TILE_OVERLAP,
              show_default=True, help="LR pixels neighbouring tiles share, blended")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="frames per call of the batchable graphs (encode, flow, decode) "
                   f"[default: {DEFAULT_BATCH}, fewer when a window decoded {DEFAULT_BATCH} at "
                   "a time does not fit in memory]")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads of the backend [default: all cores]")
@click.option("--fps", type=float, callback=_fps,
              help="frame rate of an image-folder input [default: 25]")
@click.option("--overwrite", is_flag=True, help="replace an existing OUTPUT")
@click.option("--strict", is_flag=True,
              help="stop at frames decoded with errors (damage FFmpeg conceals), writing "
                   "nothing [default: a note names them]")
@click.option("--resume", is_flag=True,
              help="keep each finished window in a hidden folder beside OUTPUT "
                   "(.NAME.resume/); the same command run again after a stop continues "
                   "from the first unfinished window")
@click.option("--frames", type=click.IntRange(min=1),
              help="demo only: length of the synthetic clip [default: 8]")
@click.pass_context
@logging_options
def main(ctx: click.Context, input: Path, output: Path | None, checkpoint, onnx_dir,
         engines_dir, backend, device, precision, compile_steps, cuda_graphs, codec, crf,
         pix_fmt, window, overlap, tile, tile_overlap, batch_size, threads, fps, overwrite, strict,
         resume, quiet, frames) -> None:
    backend_config = BackendConfig(backend=backend, checkpoint=checkpoint, onnx_dir=onnx_dir,
                                   engines_dir=engines_dir, device=device,
                                   precision=precision, threads=threads,
                                   batch_size=batch_size or DEFAULT_BATCH,
                                   compile_steps=compile_steps,
                                   cuda_graphs=cuda_graphs)
    try:
        run_config = RunConfig(window=window, overlap=overlap, codec=codec, crf=crf, fps=fps,
                               overwrite=overwrite, quiet=quiet, strict=strict, tile=tile,
                               tile_overlap=tile_overlap, resume=resume, pix_fmt=pix_fmt,
                               fit_batch=batch_size is None)
    except HirnError as error:  # a tile size or overlap that cannot run
        raise click.UsageError(str(error)) from error
    demo = str(input) == "demo"
    try:
        with _terminate_as_interrupt(), _frames_to_stdout(output, demo):
            _dispatch(input, output, backend_config, run_config, demo, frames, quiet)
    except KeyboardInterrupt as stop:
        said, code = ((stop.said, stop.exit_code) if isinstance(stop, Terminated)
                      else ("interrupted (Ctrl-C)", EXIT_INTERRUPTED))
        kept = ("finished windows are kept beside the output (--resume)" if run_config.resume
                else "finished outputs of a batch are kept")
        click.echo(f"\n{said}: the output being written was removed ({kept}: run the same "
                   f"command again to go on); the input is untouched", err=True)
        ctx.exit(code)
    except OutputExistsError as error:
        raise click.ClickException(f"{error.path} {error.why}: pass --overwrite to replace "
                                   f"it, or choose another output") from error
    except HirnError as error:
        raise click.ClickException(_message(error)) from error
    except Exception as error:  # outside a file's windows (those say more)
        if not is_out_of_memory(error):
            raise
        raise click.ClickException(_out_of_memory(run_config, backend_config)) from error


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, or torchrun stopping its other processes) or SIGHUP (the
    terminal closed), handled like Ctrl-C so that the output being written is removed."""

    def __init__(self, said: str, exit_code: int):
        super().__init__(said)
        self.said, self.exit_code = said, exit_code


_STOPS = {signal.SIGTERM: ("terminated", EXIT_TERMINATED),
          signal.SIGHUP: ("hung up (the terminal was closed)", EXIT_HUNG_UP)}


@contextmanager
def _terminate_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise Terminated(*_STOPS[signum])

    # Ctrl-C raises KeyboardInterrupt again (handled in main), not the loading-time exit
    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = {stop: signal.signal(stop, handler) for stop in _STOPS}
    try:
        yield
    finally:
        for stop, action in previous.items():
            signal.signal(stop, action)


def _frames_to_stdout(output: Path | None, demo: bool):
    """With ``-o -``, standard output carries the Y4M stream only: anything else printed
    (the summary, a library's messages) goes to standard error."""
    from contextlib import nullcontext

    from hirn.media import y4m

    return y4m.frames_to_stdout() if output is not None and y4m.is_pipe(output) and not demo \
        else nullcontext()


def _dispatch(input: Path, output: Path | None, backend_config: BackendConfig,
              run_config: RunConfig, demo: bool, frames: int | None, quiet: bool) -> None:
    """The demo, a batch folder, or one input."""
    if frames is not None and not demo:
        raise click.UsageError("--frames applies to hirn-run demo only")
    if run_config.resume and (demo or "-" in (str(input), str(output))):
        raise click.UsageError("--resume needs an input file and an output path (not the "
                               "demo, not a pipe): its segments are kept beside the output")
    backend_config = _resolve(backend_config, quiet)
    if demo:
        from hirn.runtime.demo import run_demo

        run_demo(output or Path("hirn-demo"), backend_config, frames=frames, quiet=quiet)
    elif output is None:
        raise click.UsageError("pass the output with -o OUTPUT")
    else:
        _run(input, output, backend_config, run_config)


def _resolve(config: BackendConfig, quiet: bool = False) -> BackendConfig:
    """The backend inferred from the weights given, and on the CPU the fastest path where
    backend or precision were left open (an information line says which); the backend
    checks its own options when its runner is made (``create_runner``)."""
    from hirn.runtime.backends import fastest_cpu_path
    from hirn.runtime.progress import info
    from hirn.runtime.weights import infer_backend

    config, path = fastest_cpu_path(infer_backend(config), config.backend is not None)
    if path:
        info(f"CPU path: {path}", quiet)
    return config


def _run(input: Path, output: Path, backend: BackendConfig, config: RunConfig) -> None:
    """One input, or a batch folder shared out among torchrun's processes."""
    from hirn.core.errors import BatchError
    from hirn.runtime import resume
    from hirn.runtime.batch import Shard, is_batch, run_batch
    from hirn.runtime.pipeline import upscale_file
    from hirn.runtime.progress import info, summary

    shard = Shard.from_env()
    if backend.device == "cuda" and shard.world_size > 1:
        backend = replace(backend, device=f"cuda:{shard.local_rank}")
    runner = fp32_runner = None

    def get_runner():
        nonlocal runner
        if runner is None:
            from hirn.runtime.backends import create_runner

            runner = create_runner(backend)
            info(f"{shard.label}{runner.describe()}; windows write {config.window} frames "
                 f"and read {config.overlap} more on each side", config.quiet)
        return runner

    def get_fp32_runner():
        """The same model in FP32, for windows that overflowed in FP16 (made once, if ever)."""
        nonlocal fp32_runner
        if fp32_runner is None:
            from hirn.runtime.backends import create_runner

            fp32_runner = create_runner(replace(backend, precision="fp32"))
            info(f"{shard.label}computing again in FP32 with {fp32_runner.describe()}",
                 config.quiet)
        return fp32_runner

    model = resume.model_identity(backend) if config.resume else None

    def upscale_one(video: Path, out: Path, overwrite: bool = config.overwrite) -> None:
        stats = upscale_file(video, out, get_runner, replace(config, overwrite=overwrite),
                             batch_size=backend.batch_size, label=shard.label,
                             get_fp32_runner=get_fp32_runner, model=model)
        click.echo(shard.label + summary(stats.frames, stats.seconds, out))

    if str(input) != "-" and input.is_dir() and is_batch(input):
        if str(output) == "-":
            raise click.UsageError(f"{input} is a folder of videos: -o - takes one input "
                                   f"(a video, a folder of images, or - for a Y4M pipe)")
        report = run_batch(input, output, config.codec, config.overwrite, shard, upscale_one)
        click.echo(report.line(shard))
        if report.failed:
            listing = "\n  ".join(f"{video.name}: {why}" for video, why in report.failed)
            raise BatchError(f"{len(report.failed)} videos failed:\n  {listing}")
        return
    if shard.rank > 0:
        info(f"{shard.label}a single input is upscaled by the first process only",
             config.quiet)
        return
    upscale_one(input, output)


def _message(error: BaseException) -> str:
    """The error's text, with a hint where the cause was a file-size limit."""
    text = str(error)
    cause = error.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
        text += (" (the file-size limit of this process or file system was reached: write to "
                 "another disk, or raise the limit, e.g. ulimit -f unlimited)")
    return text


def _out_of_memory(config: RunConfig, backend: BackendConfig) -> str:
    return (f"out of memory while upscaling (windows of {config.window} + 2 x "
            f"{config.overlap} frames on {backend.device}): lower --window or --overlap, or "
            f"--batch-size (now {backend.batch_size}); no output was written")


if __name__ == "__main__":  # python -m hirn.runtime.cli (e.g. under torchrun)
    main()
