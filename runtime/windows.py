"""Long videos in windows, so that memory is bounded by the window, not the video length.

A window keeps (writes) ``window`` consecutive frames, its core, and reads ``overlap`` more
frames on each side as context for the recurrence (fewer at the ends of the video). Cores
tile the video, so every frame is written once, with at least ``overlap`` frames of context on
each side inside its window (unless the video ends first). With ``overlap < window``, that is
the window where it sits deepest: in a neighbouring window it has fewer.

The last window also takes the frames that would be left for a short final core (up to
``overlap`` of them): a window never reads more than ``window + 2 * overlap`` frames, and no
core is shorter than necessary. Windows are cut as frames arrive, without knowing the length
of the video in advance (one frame is read ahead to see where it ends).

``min_frames`` makes every window read at least that many frames where the video has them:
HiRN's group branch works in groups of 16 frames only in clips of 16 frames or more
(:data:`GOP_FRAMES`; shorter clips get groups of 7), so a shorter window would change how its
frames are computed, not just how much context they see. Short windows read more context on
both sides (the overlap grows), and a short last window reaches further back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# make_plan's group branch uses groups of 16 frames from 16 frames on (groups of 7 below)
GOP_FRAMES = 16


@dataclass(frozen=True)
class Window:
    """Frames ``[start, stop)`` are read; frames ``[keep_start, keep_stop)`` are written."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def keep(self) -> slice:
        """The written frames, as a slice of the window's own frames."""
        return slice(self.keep_start - self.start, self.keep_stop - self.start)


def check_window(window: int, overlap: int) -> None:
    """Raise ValueError for a window shorter than 1 frame or a negative overlap."""
    if window < 1:
        raise ValueError(f"the window must hold at least 1 frame, got {window}")
    if overlap < 0:
        raise ValueError(f"the overlap cannot be negative, got {overlap}")


def effective_overlap(window: int, overlap: int, min_frames: int = 1) -> int:
    """The overlap that makes a window of ``window`` frames read ``min_frames`` at least."""
    return max(overlap, -(-(min_frames - window) // 2))


def max_frames_read(window: int, overlap: int, min_frames: int = 1) -> int:
    """The most frames one window of :func:`iter_windows` reads, whatever the video."""
    return max(window + 2 * effective_overlap(window, overlap, min_frames), min_frames)


def iter_windows(frames: Iterable[T], window: int, overlap: int, min_frames: int = 1
                 ) -> Iterator[tuple[Window, list[T]]]:
    """Cut a stream of frames into windows, reading each frame once, as late as possible.

    Yields ``(Window, frames of the window)``; a window reads at most
    ``max(window + 2 * overlap, min_frames)`` frames, and at most
    ``window + overlap + 1 + max(overlap, min_frames - 1)`` frames are held at any time (with
    the overlap widened for ``min_frames``): until the video's end is seen, a last window
    that reaches ``min_frames`` back from it is still possible.
    """
    check_window(window, overlap)
    overlap = effective_overlap(window, overlap, min_frames)
    stream = iter(frames)
    held: list[T] = []  # frames from index `first` on
    first = 0
    core = 0
    ended = False
    while True:
        # the last window may reach back to min_frames before its end (> core)
        keep_from = max(0, min(core - overlap, core + 1 - min_frames))
        del held[: keep_from - first]
        first = keep_from
        # a full window reads up to `reach` (further near the start, for min_frames); one
        # frame more tells whether the video ends there (then the window keeps all the rest)
        reach = max(core + window + overlap, min_frames)
        while not ended and first + len(held) <= reach:
            item = next(stream, _END)
            if item is _END:
                ended = True
            else:
                held.append(item)
        total = first + len(held)  # frames seen so far
        if core >= total:
            return  # an empty video
        last = ended and total <= reach
        keep_stop = total if last else core + window
        stop = total if last else reach
        start = max(0, min(core - overlap, stop - min_frames))
        yield Window(start, stop, core, keep_stop), held[start - first: stop - first]
        if last:
            return
        core = keep_stop


def plan_windows(num_frames: int, window: int, overlap: int, min_frames: int = 1
                 ) -> list[Window]:
    """The windows of a video of ``num_frames`` frames (as :func:`iter_windows` cuts them)."""
    return [w for w, _ in iter_windows(range(num_frames), window, overlap, min_frames)]


_END = object()
