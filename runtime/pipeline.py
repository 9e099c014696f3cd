"""Upscale one video (or image folder) into one output, streaming, in windows.

Three stages overlap: a thread decodes frames ahead of the model (a bounded queue), the main
thread runs the model on one window at a time (:mod:`hirn.runtime.windows`), and a thread
encodes finished frames as soon as they come (a bounded queue). PyAV and the model release
the GIL while they work, so decoding and encoding hide behind the model. Memory holds one
window's features plus a window of frames in each queue, whatever the video length.

Example::

    source = open_source("clip.mp4")
    with open_output(source, "clip_x4.mp4", RunConfig()) as sink:
        stats = upscale(source, sink, runner, RunConfig())
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from hirn.core.errors import (
    BackendError,
    DamagedFramesError,
    NonFiniteOutputError,
    WindowMemoryError,
    address_space_limit,
    is_out_of_memory,
)
from hirn.core.words import name_frames
from hirn.media.video import FrameSink, FrameSource, open_sink, open_source
from hirn.runtime.backends import Runner
from hirn.runtime.driver import SampleCollector, upscale_clip
from hirn.runtime.padding import SCALE, pad_frames, to_float
from hirn.runtime.progress import info, note, progress_bar
from hirn.runtime.resume import open_segments, work_folder
from hirn.runtime.tiles import (
    AUTO,
    DEFAULT_TILE_OVERLAP,
    TileGrid,
    WindowFit,
    check_tile,
    choose_tiles,
    upscale_tiled,
)
from hirn.runtime.windows import GOP_FRAMES, Window, check_window, iter_windows

# Chosen from benchmarks/windowing.py (results/windowing.md): on a Vid4 calendar crop, 24 + 2 x 4
# stays within 1.1 8-bit levels of whole-clip processing (74.4 dB; 70.5 dB for 16 + 2 x 4,
# 72.5 dB for 32 + 2 x 4) for 1.2x the computation, and 32-frame windows keep the memory
# of the published model near 2.6 GiB at 320x180 (1.5-1.6 KiB per LR pixel and frame,
# benchmarks/results/window_memory.md).
DEFAULT_WINDOW = 24
DEFAULT_OVERLAP = 4
_POLL = 0.1  # seconds between checks of the other thread while waiting on a queue


@dataclass(frozen=True)
class RunConfig:
    """How ``hirn-run`` reads, windows and writes; its options map onto these fields."""

    window: int = DEFAULT_WINDOW    # frames written per window (its core)
    overlap: int = DEFAULT_OVERLAP  # frames read on each side of a core, as context
    codec: str | None = None        # h264 | h265 | ffv1 | png (None: from the output name)
    crf: int | None = None          # h264 / h265 quality, 0-51, lower is better (None: 18)
    fps: float | None = None        # frame rate of an image-folder input (None: 25)
    overwrite: bool = False         # replace an existing output
    quiet: bool = False             # no progress bar and no information lines
    strict: bool = False            # frames decoded with errors stop the run (else a note)
    pix_fmt: str | None = None      # output pixel format (None: keeps a deep source's bits)
    resume: bool = False            # keep finished windows as segments (runtime/resume.py)
    tile: str | tuple[int, int] = AUTO  # auto | none | (height, width) LR px (runtime/tiles.py)
    tile_overlap: int = DEFAULT_TILE_OVERLAP  # least overlap of neighbouring tiles, LR px
    fit_batch: bool = False         # decode fewer frames at a time when a window needs it

    def __post_init__(self):
        check_window(self.window, self.overlap)
        check_tile(self.tile, self.tile_overlap)


@dataclass
class RunStats:
    """What one run did: frames written, seconds (wall, and inside the model), and notes
    about the output (the caller shows them)."""

    frames: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    windows: int = 0
    notes: list[str] = field(default_factory=list)


def open_output(source: FrameSource, output: str | os.PathLike, config: RunConfig) -> FrameSink:
    """The sink for the x4 frames of ``source``: its rate, timestamps, audio and pixel
    aspect carried over; refuses to overwrite the input, or an output without overwrite."""
    return open_sink(output, width=SCALE * source.width, height=SCALE * source.height,
                     fps=source.fps, time_base=source.time_base, codec=config.codec,
                     crf=config.crf, audio_from=source, input_path=source.path,
                     sample_aspect_ratio=source.sample_aspect_ratio,
                     overwrite=config.overwrite, colour=source.colour,
                     sampling=source.sampling, pix_fmt=config.pix_fmt)


def upscale_file(input: str | os.PathLike, output: str | os.PathLike,
                 get_runner: Callable[[], Runner], config: RunConfig, *, batch_size: int = 4,
                 label: str = "", get_fp32_runner: Callable[[], Runner] | None = None,
                 model: dict | None = None) -> RunStats:
    """Upscale one file or image folder into ``output``, with notes and a progress bar; the
    runner is asked for only once the input and output are known good, ``get_fp32_runner``
    only if a half-precision window must be computed again (see :func:`upscale`). The caller
    reports the returned stats (see :func:`~hirn.runtime.progress.summary`). With
    ``config.resume`` the output is kept as segments in a work folder until it is whole, and
    ``model`` identifies the model there (:func:`~hirn.runtime.resume.model_identity`)."""
    source = open_source(input, fps=config.fps, strict=config.strict)
    info(label + describe_input(source), config.quiet)
    if config.fps is not None and not Path(input).is_dir():
        note("--fps applies to image folders; the video's own rate is kept")
    for text in source.notes:
        note(text)
    shown = set(source.notes)
    if not config.resume and work_folder(output).is_dir():
        note(f"{work_folder(output)} holds the windows of an earlier --resume run, which this "
             f"run ignores: pass --resume to continue that run, or delete the folder")
    opened = (open_segments(source, output, config, model) if config.resume
              else open_output(source, output, config))
    with opened as sink:
        runner = get_runner()
        tiles = choose_tiles(runner, source.height, source.width, config.tile,
                             config.tile_overlap, config.window, config.overlap, batch_size,
                             source.frame_count, fit_batch=config.fit_batch)
        batch_size = tiles.batch_size or batch_size
        if tiles.line:
            info(label + tiles.line, config.quiet)
        try:
            with progress_bar(source.frame_count, label + Path(input).name,
                              config.quiet) as bar:
                stats = upscale(source, sink, runner, config, batch_size=batch_size,
                                progress=bar, make_fp32_runner=get_fp32_runner, tiles=tiles)
        except Exception as error:  # from the model, a decoder or an encoder (a thread)
            if not is_out_of_memory(error):
                raise
            # what ran, not what was asked: the batch and tiles may have been chosen here
            raise WindowMemoryError(out_of_memory_message(
                config, runner.device, batch_size, source, tiles.grid)) from error
    for text in source.notes + sink.notes + stats.notes:
        if text not in shown:
            note(text)
    return stats


def out_of_memory_message(config: RunConfig, device: str, batch_size: int,
                          source: FrameSource | None = None,
                          grid: TileGrid | None = None) -> str:
    """What ran out and what to change: inside a file's windows (``source`` given: its size,
    the tiles and batch that ran) or outside them (loading the model, say)."""
    kept = " (finished windows are kept for --resume)" if config.resume else ""
    limit = address_space_limit()  # where one is set, it is what ran out, as a rule
    capped = (f"; this process may map only {limit / 2**30:.2f} GiB (ulimit -v): raise the "
              f"limit" if limit is not None else "")
    where = "" if source is None else f"{source.width}x{source.height} "
    how = "" if source is None else (
        f", {f'in tiles of {grid.size[1]}x{grid.size[0]} LR px' if grid else 'whole frames'}, "
        f"decoding {batch_size} frame{'s' if batch_size > 1 else ''} at a time")
    return (f"out of memory while upscaling {where}windows of {config.window} + 2 x "
            f"{config.overlap} frames on {device}{how}: lower --batch-size (now {batch_size}), "
            f"--window or --overlap, or use --tile{capped}; no output was written{kept}")


def upscale(source: FrameSource, sink: FrameSink, runner: Runner, config: RunConfig, *,
            batch_size: int = 4, progress: Callable[[int], None] | None = None,
            on_frame: Callable[[np.ndarray], None] | None = None,
            make_fp32_runner: Callable[[], Runner] | None = None,
            tiles: WindowFit | None = None) -> RunStats:
    """Upscale every frame of ``source`` into ``sink`` (which the caller closes or aborts).

    Args:
        batch_size: frames per call of the batchable graphs.
        progress: called with the number of frames just encoded (from the encoder thread).
        on_frame: called with each output frame ``[4H, 4W, 3]`` uint8 before it is encoded.
        make_fp32_runner: makes the same model in FP32; called at most once, when a window that
            ``runner`` computed in half precision holds NaN or Inf, to compute it again
            (None: such a window stops the run, as one computed in FP32 always does).
        tiles: how each window runs: its grid (None: whole frames) and
            ``recompute_backward`` (as for :func:`~hirn.runtime.driver.upscale_clip`); its
            batch size is the caller's to pass (None: whole frames, every map kept).
    """
    stats = RunStats()
    began = time.perf_counter()
    ahead = config.window + config.overlap + 1  # the next window's new frames, decoded early
    tiles = tiles or WindowFit(None)
    recompute = _Recompute(runner, make_fp32_runner, tiles)
    with _Reader(source, ahead) as frames, _Writer(sink, config.window, progress) as writer:
        windows = iter_windows(frames, config.window, config.overlap, GOP_FRAMES)
        for index, (window, items) in enumerate(windows):
            if config.strict:
                _refuse_damaged(source, window)
            if not sink.needs_window(index, window):  # --resume: finished earlier
                if progress is not None:
                    progress(window.keep_stop - window.keep_start)
                continue
            images = pad_frames(to_float(np.stack([image for image, _ in items])))
            clock = time.perf_counter()
            # 16 bits where the output keeps more than 8 (a sink without dtype takes 8)
            dtype = getattr(sink, "dtype", np.uint8)
            kept, bad = _upscale_window(runner, images, window, source, batch_size, dtype,
                                        tiles)
            if bad:
                kept = recompute(images, window, bad, source, batch_size, dtype)
            stats.model_seconds += time.perf_counter() - clock
            del images
            for image, (_, pts) in zip(kept, items[window.keep]):
                if on_frame is not None:
                    on_frame(image)
                writer.put(image, pts)
            stats.windows += 1
        writer.finish()
    stats.frames = sink.frames_written
    stats.seconds = time.perf_counter() - began
    if recompute.frames:
        stats.notes.append(
            f"the model's output held NaN or Inf values in half precision (an overflow) in "
            f"{name_frames(recompute.frames)} (counted from 0): the windows holding them "
            f"were computed again in FP32")
    return stats


def _upscale_window(runner: Runner, images: np.ndarray, window: Window, source: FrameSource,
                    batch_size: int, dtype, tiles: WindowFit
                    ) -> tuple[np.ndarray, list[int]]:
    """The written frames of one window as samples ``[T, 4h, 4w, 3]`` of ``dtype``, from its
    padded frames ``images`` ``[N, 3, H', W']`` (run as ``tiles`` says), and the frames
    (counted in the window's written ones) whose output held NaN or Inf: their samples are
    not set. Untiled, each decoded batch becomes samples as it comes, so the window's output
    waits in 8 or 16 bits rather than in FP32 (a quarter or a half of the memory)."""
    samples = SampleCollector(len(range(len(images))[window.keep]), source.height,
                              source.width, dtype)
    if tiles.grid is None:
        upscale_clip(runner, images, batch_size, window.keep, on_output=samples.put,
                     recompute_backward=tiles.recompute_backward)
    else:
        samples.put(0, upscale_tiled(runner, images, tiles.grid, batch_size, window.keep,
                                     tiles.recompute_backward))
    return samples.samples, samples.bad


class _Recompute:
    """Computes a window again in FP32 when half precision overflowed; refuses a window
    with NaN or Inf otherwise. The FP32 runner is made on first need, then kept."""

    def __init__(self, runner: Runner, make_fp32: Callable[[], Runner] | None,
                 tiles: WindowFit):
        # Stand-ins for the model (tests, benchmarks) may pass no runner: FP32 then.
        self._half = getattr(runner, "element_size", 4) == 2
        self._make_fp32 = make_fp32
        self._tiles = tiles
        self._fp32: Runner | None = None
        self.frames: list[int] = []  # output frames that held NaN or Inf in half precision

    def __call__(self, images: np.ndarray, window: Window, bad: list[int],
                 source: FrameSource, batch_size: int, dtype) -> np.ndarray:
        """The window's samples computed again in FP32, its frames ``bad`` (counted in its
        written ones) having held NaN or Inf."""
        if not self._half:
            raise _non_finite(window, "the weights are probably damaged: not finite, or so "
                                      "large that they overflow (a diverged training run?); "
                                      "check or replace the checkpoint")
        if self._make_fp32 is None:
            raise _non_finite(window, "FP16 overflowed (run in FP32: --precision fp32, or "
                                      "graphs exported in fp32), or the weights are damaged")
        fp32 = self._fp32_runner(window)
        samples, still_bad = _upscale_window(fp32, images, window, source, batch_size, dtype,
                                             self._tiles)
        if still_bad:
            raise _non_finite(window, "in FP32 too, so the weights are probably damaged "
                                      "(not finite, or so large that they overflow); check "
                                      "or replace them")
        self.frames.extend(window.keep_start + i for i in bad)
        return samples

    def _fp32_runner(self, window: Window) -> Runner:
        if self._fp32 is None:
            try:
                fp32 = self._make_fp32()
            except BackendError as error:
                raise self._no_fp32(window) from error
            if fp32.element_size != 4:  # the weights given exist in half precision only
                raise self._no_fp32(window)
            self._fp32 = fp32
        return self._fp32

    @staticmethod
    def _no_fp32(window: Window) -> NonFiniteOutputError:
        return _non_finite(window, "FP16 overflowed, and these weights have no FP32 graphs to "
                                   "compute it again with: export FP32 graphs (hirn-export "
                                   "onnx --precision fp32) and run those")


def _non_finite(window: Window, cause: str) -> NonFiniteOutputError:
    """The error for a window whose output holds NaN or Inf: quantised, it would be written
    as black or white frames without a word."""
    frames = f"{window.keep_start}-{window.keep_stop - 1}"
    return NonFiniteOutputError(f"the model's output for frames {frames} holds NaN or Inf "
                                f"values: {cause}; nothing was written")


def _refuse_damaged(source: FrameSource, window: Window) -> None:
    """Under --strict: stop before the model reads a frame the decoder marked corrupt."""
    damaged = [i for i in list(source.damaged) if i < window.stop]
    if damaged:
        raise DamagedFramesError(
            f"{source.path}: the decoder found errors in {name_frames(damaged)} "
            f"(counted from 0) and concealed them: the input is damaged or cut short; nothing "
            f"was written (drop --strict to upscale it anyway, with a note naming those "
            f"frames)")


@dataclass
class _Failure:
    error: BaseException


_END = object()


class _Reader:
    """Iterates a source in a background thread, up to ``ahead`` frames in advance."""

    def __init__(self, source: FrameSource, ahead: int):
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="hirn-decode", daemon=True)

    def __enter__(self) -> Iterator:
        self._thread.start()
        return self._frames()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _frames(self) -> Iterator:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def _work(self) -> None:
        try:
            for frame in self._source:
                if not self._put(frame):
                    return
            self._put(_END)
        except BaseException as error:  # handed to the main thread, which raises it
            self._put(_Failure(error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                pass
        return False


class _Writer:
    """Encodes frames in a background thread; ``put`` raises the encoder's error, if any."""

    def __init__(self, sink: FrameSink, size: int, progress: Callable[[int], None] | None):
        self._sink, self._progress = sink, progress
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._work, name="hirn-encode", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self._thread.is_alive():  # an error or Ctrl-C in the main thread: drop the rest
            self._cancelled = True
            while True:  # make room for the end mark (only this thread puts)
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(_END)
            self._thread.join()

    def put(self, image: np.ndarray, pts: int) -> None:
        """Queue one frame for encoding (waits while the queue is full)."""
        self._send((image, pts))

    def finish(self) -> None:
        """Wait until every frame is encoded; raise the encoder's error, if any."""
        self._send(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _send(self, item) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                pass

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _END or self._cancelled:
                return
            try:
                self._sink.write(*item)
            except BaseException as error:  # raised again in the main thread
                self._error = error
                return
            if self._progress is not None:
                self._progress(1)


def describe_input(source: FrameSource) -> str:
    """One line about an input: size, frames, rate, audio."""
    count = ("unknown number of" if source.frame_count is None else
             f"{'' if source.frame_count_exact else 'about '}{source.frame_count}")
    rate = float(Fraction(source.fps))
    audio = ", with audio" if source.has_audio else ""
    return (f"{Path(source.path).name}: {source.width}x{source.height}, {count} frames at "
            f"{rate:.3g} frames/s{audio}")
