"""Windows over long videos, and the streaming pipeline that runs them.

The pipeline tests stand a cheap stand-in for the model (nearest-neighbour x4 that stamps
each window's number into its frames) so that they can check, on real videos, which window
wrote each frame, how many frames were held, and what happens on errors and Ctrl-C.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from hirn.core.errors import DecodeError, SinkError
from hirn.core.schedule import make_plan
from hirn.media.video import open_source, read_frames
from hirn.media.video_writer import FrameSinkBase
from hirn.runtime import pipeline
from hirn.runtime.pipeline import RunConfig, open_output, upscale
from hirn.runtime.windows import (
    GOP_FRAMES,
    Window,
    effective_overlap,
    iter_windows,
    max_frames_read,
    plan_windows,
)

CASES = [(n, w, o) for n in (1, 2, 5, 16, 23, 41) for w in (1, 3, 8, 24) for o in (0, 1, 4)]
WITH_MINIMUM = [(n, w, o, m) for n, w, o in CASES for m in (1, GOP_FRAMES)]


def depth(frame: int, window: Window, num_frames: int) -> float:
    """Frames of context on the thinner side of ``frame`` in ``window`` (the ends of the
    video do not count as a side)."""
    before = frame - window.start if window.start > 0 else np.inf
    after = window.stop - 1 - frame if window.stop < num_frames else np.inf
    return min(before, after)


@pytest.mark.parametrize("num_frames, window, overlap, minimum", WITH_MINIMUM)
def test_cores_tile_the_video_and_windows_stay_bounded(num_frames, window, overlap, minimum):
    windows = plan_windows(num_frames, window, overlap, minimum)
    kept = [f for w in windows for f in range(w.keep_start, w.keep_stop)]
    assert kept == list(range(num_frames))  # every frame written once, in order
    wide = effective_overlap(window, overlap, minimum)
    assert wide >= overlap and window + 2 * wide in (minimum, minimum + 1) or wide == overlap
    for w in windows:
        assert w.size <= max(window + 2 * wide, minimum)
        assert w.size >= min(minimum, num_frames)  # e.g. 16 frames: the group branch's GOP
        if w is not windows[-1]:
            assert w.start == max(0, w.keep_start - wide)
            assert w.stop == max(w.keep_stop + wide, minimum)  # further near the start
        assert w.keep_stop - w.keep_start <= max(window + wide, minimum)
    assert windows[-1].stop == num_frames


@pytest.mark.parametrize("num_frames, window, overlap, minimum", WITH_MINIMUM)
def test_each_frame_comes_from_the_window_where_it_sits_deepest(num_frames, window, overlap,
                                                                minimum):
    windows = plan_windows(num_frames, window, overlap, minimum)
    for frame in range(num_frames):
        holding = [w for w in windows if w.start <= frame < w.stop]
        writer = next(w for w in windows if w.keep_start <= frame < w.keep_stop)
        assert depth(frame, writer, num_frames) >= overlap
        # (windows near the start all begin at frame 0 when the overlap is larger; windows
        # stretched to the minimum length hold more context, but not always around the core)
        if overlap < window and minimum == 1:
            assert depth(frame, writer, num_frames) >= max(depth(frame, w, num_frames)
                                                           for w in holding)


def test_a_clip_that_fits_is_one_window():
    assert plan_windows(28, 24, 4) == [Window(0, 28, 0, 28)]
    assert plan_windows(29, 24, 4) == [Window(0, 28, 0, 24), Window(20, 29, 24, 29)]
    assert plan_windows(0, 24, 4) == []


def test_short_windows_read_enough_frames_for_the_16_frame_groups():
    # a short last window reaches further back ...
    assert plan_windows(29, 24, 4, GOP_FRAMES)[-1] == Window(13, 29, 24, 29)
    # ... and short windows read more context on both sides
    assert plan_windows(40, 8, 0, GOP_FRAMES)[1] == Window(4, 20, 8, 16)
    # the group branch changes its groups at exactly this length
    groups = {t: [s.frame for s in make_plan(t).steps if s.branch == "group"][:2]
              for t in (GOP_FRAMES - 1, GOP_FRAMES)}
    assert groups == {GOP_FRAMES - 1: [0, 6], GOP_FRAMES: [0, 8]}  # GOP-7 vs GOP-16 order


def test_windows_read_frames_as_late_as_possible():
    pulled = []

    def frames():
        for index in range(50):
            pulled.append(index)
            yield index

    for window, items in iter_windows(frames(), 6, 2, GOP_FRAMES):
        assert items == list(range(window.start, window.stop))
        assert len(pulled) <= window.stop + 1  # one frame of look-ahead


@pytest.mark.parametrize("window, overlap, minimum", [(1, 0, 1), (3, 1, 1), (8, 4, 1),
                                                      (6, 2, GOP_FRAMES), (3, 0, GOP_FRAMES),
                                                      (24, 4, GOP_FRAMES)])
def test_max_frames_read_is_the_largest_window_of_any_video(window, overlap, minimum):
    """The memory check sizes a window by it: neither less (too little memory) nor more."""
    largest = max(w.size for n in range(1, 60) for w in plan_windows(n, window, overlap, minimum))
    assert max_frames_read(window, overlap, minimum) == largest
    if minimum == 1:  # the default
        assert max_frames_read(window, overlap) == largest


def test_by_default_a_window_reads_no_more_than_its_core_and_overlap():
    assert plan_windows(3, 1, 0) == [Window(0, 1, 0, 1), Window(1, 2, 1, 2), Window(2, 3, 2, 3)]
    assert effective_overlap(1, 0) == 0 and effective_overlap(3, 2) == 2
    assert [w for w, _ in iter_windows(range(3), 1, 0)] == plan_windows(3, 1, 0)


@pytest.mark.parametrize("window, overlap, minimum",
                         sorted({(w, o, m) for _, w, o, m in WITH_MINIMUM}))
def test_each_window_holds_its_own_frames(window, overlap, minimum):
    """Every video length up to 50 frames: among them a last window that reaches back
    ``minimum`` frames from one frame past the previous core (25 frames in windows of 24
    without overlap: frames 9-24), whose first frames must still be held."""
    for num_frames in range(1, 51):
        for w, items in iter_windows(range(num_frames), window, overlap, minimum):
            assert items == list(range(w.start, w.stop)), num_frames


@pytest.mark.parametrize("window, overlap, message", [(0, 0, "at least 1 frame, got 0"),
                                                      (3, -1, "cannot be negative, got -1")])
def test_bad_window_settings(window, overlap, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(10, window, overlap)
    with pytest.raises(ValueError):
        RunConfig(window=window, overlap=overlap)


def frames_held_bound(window: int, overlap: int, minimum: int) -> int:
    """The most frames :func:`iter_windows` holds: from the core's start, ``window`` frames,
    the overlap (widened for ``minimum``) and one frame of look-ahead; behind it, the overlap
    or, in case this is the last window, ``minimum - 1`` frames."""
    wide = effective_overlap(window, overlap, minimum)
    return window + wide + 1 + max(wide, minimum - 1)


class Frame:
    """A frame that can be watched with a weak reference (to count the live ones)."""

    def __init__(self, index: int):
        self.index = index


@pytest.mark.parametrize("window, overlap, minimum", [(6, 2, GOP_FRAMES), (3, 0, 1),
                                                      (24, 4, GOP_FRAMES)])
@pytest.mark.parametrize("num_frames", [60, 400])
def test_frames_held_stay_within_the_window_bound_as_the_video_grows(num_frames, window,
                                                                     overlap, minimum):
    """Memory bounded by the window: frames are released once no later window can read
    them, so the frames alive stay within a bound set by the window, whatever the length."""
    alive = weakref.WeakSet()

    def frames():
        for index in range(num_frames):
            frame = Frame(index)
            alive.add(frame)
            yield frame

    bound = frames_held_bound(window, overlap, minimum)
    peak = 0
    for w, items in iter_windows(frames(), window, overlap, minimum):
        assert [f.index for f in items] == list(range(w.start, w.stop))
        peak = max(peak, len(alive))
        del items
    assert w.stop == num_frames
    assert 0 < peak <= bound


# ---------------------------------------------------------------------------------------------
# The streaming pipeline, with a stand-in model


class SyntheticSource:
    """An in-memory source of ``count`` small frames that counts its frames still alive."""

    def __init__(self, count: int, height: int = 8, width: int = 8):
        self.count, self.height, self.width = count, height, width
        self.alive = 0
        self._lock = threading.Lock()

    def _released(self) -> None:
        with self._lock:
            self.alive -= 1

    def __iter__(self):
        for index in range(self.count):
            image = np.full((self.height, self.width, 3), index % 256, np.uint8)
            with self._lock:
                self.alive += 1
            weakref.finalize(image, self._released)
            yield image, index


class CountingSink(FrameSinkBase):
    """Takes frames and keeps only their number and timestamps."""

    def __init__(self):
        self.frames_written, self.stamps = 0, []

    def write(self, image, pts):
        self.frames_written += 1
        self.stamps.append(pts)


@pytest.mark.parametrize("num_frames", [40, 240])
def test_pipeline_memory_is_bounded_by_the_window_not_the_video(num_frames, monkeypatch):
    """Memory bounded by the window: the decoded frames alive while the model runs (held by
    the windows and the read-ahead queue) and the frames each model call sees stay within
    the window's bound, for a short and a 6x longer video."""
    window, overlap = 4, 1
    source = SyntheticSource(num_frames)
    alive_at_call, frames_per_call = [], []

    def model(runner, frames, batch_size=4, keep=slice(None), on_output=None, **_):
        alive_at_call.append(source.alive)
        frames_per_call.append(len(frames))
        on_output(0, frames.repeat(4, axis=2).repeat(4, axis=3)[keep])

    monkeypatch.setattr(pipeline, "upscale_clip", model)
    sink = CountingSink()
    upscale(source, sink, None, RunConfig(window=window, overlap=overlap))
    assert sink.stamps == list(range(num_frames))
    read = max_frames_read(window, overlap, GOP_FRAMES)
    held = frames_held_bound(window, overlap, GOP_FRAMES)  # by the windows
    queued = window + overlap + 1 + 1  # decoded ahead, plus one in the decoder's hand
    assert max(frames_per_call) <= read
    assert max(alive_at_call) <= held + queued


class StampingModel:
    """Stands in for ``upscale_clip``: nearest x4 with the window's number stamped in the
    top-left 4x4 pixels; records what it was given."""

    def __init__(self, source_reads: list | None = None, fail_at: int | None = None,
                 error: BaseException | None = None):
        self.calls: list[tuple[int, ...]] = []
        self.reads_at_call: list[int] = []
        self.source_reads = source_reads
        self.fail_at, self.error = fail_at, error

    def __call__(self, runner, frames: np.ndarray, batch_size: int = 4,
                 keep: slice = slice(None), on_output=None,
                 recompute_backward: int | None = None) -> np.ndarray | None:
        if self.error is not None and len(self.calls) == self.fail_at:
            raise self.error
        self.calls.append(frames.shape)
        if self.source_reads is not None:
            self.reads_at_call.append(len(self.source_reads))
        hr = frames.repeat(4, axis=2).repeat(4, axis=3)
        hr[:, :, :4, :4] = len(self.calls) / 255.0
        if on_output is None:
            return hr[keep]
        on_output(0, hr[keep])
        return None


class CountingSource:
    """A source wrapper that counts the frames taken from it."""

    def __init__(self, source):
        self._source, self.reads = source, []

    def __getattr__(self, name):
        return getattr(self._source, name)

    def __iter__(self):
        for frame in self._source:
            self.reads.append(frame.pts)
            yield frame


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture
def clip(tmp_path, media):
    """23 lossless frames of 60x46 (odd-free but below 64: padded), 25 fps."""
    frames = media.synthetic_frames(23, width=60, height=46)
    return media.write_video(tmp_path / "clip.mkv", frames, codec="ffv1", pix_fmt="bgr0")


def test_frames_come_from_their_windows_in_order_with_their_timestamps(clip, tmp_path,
                                                                        monkeypatch):
    real = open_source(clip)
    source = CountingSource(real)
    model = StampingModel(source.reads)
    monkeypatch.setattr(pipeline, "upscale_clip", model)
    config = RunConfig(window=5, overlap=2, codec="ffv1")
    with open_output(real, tmp_path / "out.mkv", config) as sink:
        stats = upscale(source, sink, None, config)
    windows = plan_windows(23, 5, 2, GOP_FRAMES)
    assert stats.frames == 23 and stats.windows == len(windows) == model.calls.__len__()
    # the model saw each window whole, padded to 64x64 (60x46 is below the minimum)
    assert [shape[0] for shape in model.calls] == [w.size for w in windows]
    assert all(shape[2:] == (64, 64) for shape in model.calls)
    # streaming: when a window runs, at most the next window's frames were decoded ahead
    for window, reads in zip(windows, model.reads_at_call):
        assert reads <= window.stop + 5 + 2 + 3
    out = open_source(tmp_path / "out.mkv")
    lr = read_frames(clip)
    assert (out.width, out.height) == (240, 184)
    for index, (image, pts) in enumerate(out):
        writer = next(k for k, w in enumerate(windows) if w.keep_start <= index < w.keep_stop)
        assert (image[:4, :4] == writer + 1).all()  # written by the window that keeps it
        expected = lr[index].repeat(4, axis=0).repeat(4, axis=1)
        assert np.array_equal(image[4:, 4:], expected[4:, 4:])
        assert pts == [p for _, p in open_source(clip)][index]


def test_any_size_is_padded_for_the_model_and_cropped_back(tmp_path, media, monkeypatch):
    model = StampingModel()
    monkeypatch.setattr(pipeline, "upscale_clip", model)
    frames = media.synthetic_frames(2, width=240, height=135)
    path = media.write_video(tmp_path / "in.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    source = open_source(path)
    config = RunConfig()
    with open_output(source, tmp_path / "out", config) as sink:
        upscale(source, sink, None, config)
    assert model.calls == [(2, 3, 136, 240)]
    out = read_frames(tmp_path / "out")
    assert out.shape == (2, 540, 960, 3)
    assert np.array_equal(out[:, 4:, 4:], read_frames(path).repeat(4, 1).repeat(4, 2)[:, 4:, 4:])


@pytest.mark.parametrize("failure", ["decode", "encode", "model", "ctrl-c"])
def test_failures_stop_every_stage_and_leave_no_output(clip, tmp_path, monkeypatch, failure):
    error = {"model": RuntimeError("model failed"), "ctrl-c": KeyboardInterrupt()}.get(failure)
    monkeypatch.setattr(pipeline, "upscale_clip", StampingModel(fail_at=2, error=error))
    source = open_source(clip)
    expected = {"model": RuntimeError, "ctrl-c": KeyboardInterrupt, "decode": DecodeError,
                "encode": SinkError}[failure]
    if failure == "decode":  # the decoder fails after 4 frames, as on a damaged packet
        frames = iter(source)

        def failing_frames():
            for _ in range(4):
                yield next(frames)
            raise DecodeError("damaged packet (simulated)", frames_read=4)

        monkeypatch.setattr(type(source), "__iter__", lambda self: failing_frames())
    config = RunConfig(window=3, overlap=1, codec="ffv1")
    with pytest.raises(expected):
        with open_output(source, tmp_path / "out.mkv", config) as sink:
            if failure == "encode":
                write = sink.write

                def failing_write(image, pts):
                    if sink.frames_written == 4:
                        raise SinkError("disk full (simulated)")
                    write(image, pts)

                sink.write = failing_write
            upscale(source, sink, None, config)
    assert leftovers(tmp_path, {"clip.mkv"}) == []
    alive = [t.name for t in threading.enumerate() if t.name.startswith("hirn-")]
    assert alive == []
