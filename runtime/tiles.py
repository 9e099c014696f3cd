"""Spatial tiles, for frames whose window does not fit in memory even one frame at a time.

A tile is an LR crop of the padded frames that runs the whole window through the model
(encode, flows, the three branches, decode) as if it were the video; the tiles' x4 outputs
are blended where they overlap, with linear (feather) weights that sum to one, so a seam
fades over the overlap instead of showing as a line. Tiles sit inside the padded frame and
have even sides of at least ``MIN_SIZE``, so a tile needs no padding of its own, and a grid
of one tile gives the untiled output bit for bit.

What is lost: a tile's flows and features do not see beyond its crop, so motion that crosses
its border and the receptive field near it differ from the whole frame's
(``benchmarks/results/tile_quality.md`` measures the dB lost per tile size and overlap).

Memory: a tile's window needs :func:`~hirn.runtime.memory.window_bytes` of its size where
the runner keeps its arrays (a GPU, or this host); the window's frames and its stitched
output stay in host memory, which on the CPU is the same memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from hirn.core.constants import MIN_SIZE, SCALE, SIZE_MULTIPLE
from hirn.core.errors import TileError, WindowMemoryError
from hirn.runtime.backends import Runner
from hirn.runtime.driver import upscale_clip
from hirn.runtime.memory import (
    available_bytes,
    check_window_fits,
    frames_read,
    largest_fitting,
    leanest,
    window_bytes,
)
from hirn.runtime.padding import padded_size
from hirn.runtime.windows import GOP_FRAMES

AUTO, NONE = "auto", "none"
# Chosen from benchmarks/tile_quality.py (results/tile_quality.md): with 64 px tiles (the
# most seams) on the four Vid4 clips, 16 px keeps every pixel within 1 8-bit level of
# untiled (worst 0.99; 73.7-76.2 dB), where no overlap costs up to 61 levels (47-50 dB);
# it adds a third to 64 px tiles' work, and a few percent to the large tiles of --tile auto.
DEFAULT_TILE_OVERLAP = 16
_GIB = 2**30
_FLOAT32 = 4
_OUTPUT_CHANNELS = 3  # the stitched output: RGB at SCALE x the size

Span = tuple[int, int]  # [start, stop) along one axis, in LR pixels of the padded frame


def parse_tile(text: str) -> str | tuple[int, int]:
    """``auto``, ``none`` or ``HxW`` (LR pixels, e.g. ``256x320``) -> the value
    :class:`~hirn.runtime.pipeline.RunConfig` takes; :class:`TileError` otherwise."""
    text = text.strip().lower()
    if text in (AUTO, NONE):
        return text
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None:
        raise TileError(f"{text!r} is not a tile size: give auto, none, or HxW in LR pixels "
                        f"(e.g. 256x320)")
    return int(match.group(1)), int(match.group(2))


def check_tile(tile: str | tuple[int, int], overlap: int) -> None:
    """Raise :class:`TileError` for a tile size the network cannot take or an overlap that
    does not fit in the tile (at most half a tile, so that only neighbours overlap)."""
    if overlap < 0:
        raise TileError(f"the tile overlap cannot be negative, got {overlap}")
    if tile in (AUTO, NONE):
        if tile == AUTO and 2 * overlap > MIN_SIZE:  # auto may need the smallest tiles
            raise TileError(f"a tile overlap of {overlap} px does not fit the smallest tiles "
                            f"({MIN_SIZE} px): give at most {MIN_SIZE // 2}")
        return
    if not (isinstance(tile, tuple) and len(tile) == 2):
        raise TileError(f"{tile!r} is not a tile size: give auto, none, or (height, width)")
    for side in tile:
        if side < MIN_SIZE or side % SIZE_MULTIPLE:
            raise TileError(f"tiles of {tile[0]}x{tile[1]} LR px cannot run: each side must "
                            f"be even and at least {MIN_SIZE}")
    if 2 * overlap > min(tile):
        raise TileError(f"a tile overlap of {overlap} px is more than half a tile of "
                        f"{tile[0]}x{tile[1]}: give at most {min(tile) // 2}")


def spans(length: int, tile: int, overlap: int) -> tuple[Span, ...]:
    """Where tiles of ``tile`` px sit along an axis of ``length``: from 0, each ``overlap``
    before the end of the one before, and the last at the end (so it may overlap more)."""
    if tile >= length:
        return ((0, length),)
    starts = [*range(0, length - tile, tile - overlap), length - tile]
    return tuple((s, s + tile) for s in starts)


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a padded LR frame: every (row span, column span) pair is one tile."""

    rows: tuple[Span, ...]
    cols: tuple[Span, ...]
    overlap: int  # the least overlap of neighbours asked for, LR px

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of one tile, LR px."""
        return self.rows[0][1] - self.rows[0][0], self.cols[0][1] - self.cols[0][0]

    @property
    def frame(self) -> tuple[int, int]:
        """(height, width) of the padded frame the grid covers."""
        return self.rows[-1][1], self.cols[-1][1]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def describe(self) -> str:
        """``2x3 of 544x656 LR px, overlap 16``."""
        (h, w) = self.size
        return f"{len(self.rows)}x{len(self.cols)} of {h}x{w} LR px, overlap {self.overlap}"


def make_grid(height: int, width: int, tile_h: int, tile_w: int, overlap: int) -> TileGrid:
    """The grid of ``tile_h x tile_w`` tiles over LR frames of ``height x width`` (padded
    first, as the network runs them)."""
    check_tile((tile_h, tile_w), overlap)
    h, w = padded_size(height, width)
    return TileGrid(spans(h, tile_h, overlap), spans(w, tile_w, overlap), overlap)


def feather(axis: tuple[Span, ...]) -> list[np.ndarray]:
    """Each span's blending weight along the axis at the x4 scale, ``[SCALE * (stop -
    start)]`` float32: 1 inside, a linear ramp across each overlap with a neighbour, and
    normalised so that the weights at every position sum to one."""
    hr = [(SCALE * a, SCALE * b) for a, b in axis]
    ramps = []
    for i, (a, b) in enumerate(hr):
        x = np.arange(a, b) + 0.5
        weight = np.ones(b - a)
        if i > 0 and hr[i - 1][1] > a:  # rises across the overlap with the previous tile
            weight = np.minimum(weight, (x - a) / (hr[i - 1][1] - a))
        if i + 1 < len(hr) and hr[i + 1][0] < b:  # falls across the overlap with the next
            weight = np.minimum(weight, (b - x) / (b - hr[i + 1][0]))
        ramps.append(weight)
    total = np.zeros(hr[-1][1])
    for (a, b), weight in zip(hr, ramps):
        total[a:b] += weight
    return [(weight / total[a:b]).astype(np.float32) for (a, b), weight in zip(hr, ramps)]


def upscale_tiled(runner: Runner, frames: np.ndarray, grid: TileGrid, batch_size: int = 4,
                  keep: slice = slice(None), recompute_backward: int | None = None
                  ) -> np.ndarray:
    """:func:`~hirn.runtime.driver.upscale_clip` tile by tile, blended.

    Args:
        frames: ``[T, 3, H, W]`` float32, padded (``(H, W) == grid.frame``); they stay in
            host memory, and only one tile's crop goes to the runner at a time.
        keep, recompute_backward: as for ``upscale_clip``.

    Returns:
        ``[len(keep), 3, 4H, 4W]`` float32, not clamped.
    """
    if frames.shape[-2:] != grid.frame:
        raise ValueError(f"frames of {frames.shape[-2:]} for a tile grid over {grid.frame}")
    if len(grid) == 1:
        return upscale_clip(runner, frames, batch_size, keep,
                            recompute_backward=recompute_backward)
    kept = len(range(len(frames))[keep])
    out = np.zeros((kept, 3, SCALE * frames.shape[2], SCALE * frames.shape[3]), np.float32)
    for (y0, y1), wy in zip(grid.rows, feather(grid.rows)):
        for (x0, x1), wx in zip(grid.cols, feather(grid.cols)):
            crop = np.ascontiguousarray(frames[:, :, y0:y1, x0:x1])
            hr = upscale_clip(runner, crop, batch_size, keep,
                              recompute_backward=recompute_backward)
            hr *= wy[:, None] * wx[None, :]
            out[..., SCALE * y0:SCALE * y1, SCALE * x0:SCALE * x1] += hr
    return out


@dataclass(frozen=True)
class WindowFit:
    """How a video's windows run: ``grid`` None is untiled; ``line`` says why tiles, a
    smaller batch or recomputed backward maps (or "" when as asked); ``batch_size`` the
    frames per batchable call (None: as asked); ``recompute_backward`` as for
    :func:`~hirn.runtime.driver.upscale_clip`."""

    grid: TileGrid | None
    line: str = ""
    batch_size: int | None = None
    recompute_backward: int | None = None


def _recompute_phrase(recompute: int) -> str:
    return (f"2 kept in {recompute} frames; the same output, one more pass of the backward "
            f"branch")


def _recompute_note(recompute: int | None) -> str:
    """The recomputation, added to a line about tiles or the batch."""
    return f"; recomputing backward maps ({_recompute_phrase(recompute)})" if recompute else ""


def choose_tiles(runner: Runner, height: int, width: int, tile: str | tuple[int, int],
                 overlap: int, window: int, window_overlap: int, batch_size: int,
                 frame_count: int | None, available: int | None = None,
                 fit_batch: bool = False) -> WindowFit:
    """The tiles for LR frames of ``height x width`` under ``--tile`` (``tile``, ``overlap``).

    ``none`` and ``auto`` when the whole window fits run untiled (``none`` refuses a window
    that does not fit, with :func:`~hirn.runtime.memory.check_window_fits`); ``auto``
    otherwise takes the grid of fewest tiles whose window fits (then the least computed
    area); ``HxW`` takes those tiles, refusing them if their window does not fit.

    Args:
        window, window_overlap: the video's windows (``--window``, ``--overlap``).
        available: free bytes where the runner keeps its arrays (None: read them).
        fit_batch: under ``auto``, first decode fewer frames at a time when that lets whole
            frames fit (the batch was not asked for; tiles cost quality, a smaller batch only
            a little speed).
    """
    check_tile(tile, overlap)
    frames = frames_read(window, window_overlap, GOP_FRAMES, frame_count)
    if tile == NONE:
        recompute = check_window_fits(runner, height, width, window, window_overlap,
                                      batch_size, GOP_FRAMES, frame_count, available)
        return WindowFit(None, _recompute_line(recompute, width, height),
                          recompute_backward=recompute)
    available = available_bytes(runner) if available is None else available
    h, w = padded_size(height, width)

    def lean_whole(batch: int) -> tuple[int, int | None]:
        return leanest(lambda r: window_bytes(runner, frames, height, width, batch,
                                              recompute_backward=r), available)

    def lean_tiles(grid: TileGrid) -> tuple[int, int | None]:
        return leanest(lambda r: tile_bytes(runner, grid, frames, batch_size, r), available)

    if tile != AUTO:
        grid = make_grid(height, width, *tile, overlap)
        need, recompute = lean_tiles(grid)
        if available is not None and need > available:
            best = largest_grid(h, w, overlap, lambda g: lean_tiles(g)[0] <= available)
            advice = (f"use --tile {best.size[0]}x{best.size[1]} (or --tile auto)"
                      if best else "use a machine or GPU with more memory, or shorter "
                                   "windows (--window, --overlap)")
            raise WindowMemoryError(
                f"tiles of {tile[0]}x{tile[1]} LR px do not fit in memory (windows of "
                f"{frames} frames need at least {need / _GIB:.1f} GiB, "
                f"{available / _GIB:.1f} GiB is free): {advice}; nothing was written")
        return WindowFit(grid, f"tiles: {grid.describe()} (--tile {tile[0]}x{tile[1]})"
                                f"{_recompute_note(recompute)}", recompute_backward=recompute)
    whole = window_bytes(runner, frames, height, width, batch_size)
    if available is None or whole <= available:
        return WindowFit(None)
    lean, recompute = lean_whole(batch_size)
    if lean <= available:
        return WindowFit(None, _recompute_line(recompute, width, height, whole, available),
                          recompute_backward=recompute)
    if fit_batch and (batch := largest_fitting(
            batch_size - 1, lambda b: lean_whole(b)[0] <= available)) is not None:
        recompute = lean_whole(batch)[1]
        return WindowFit(None, f"decoding {batch} frame{'s' if batch > 1 else ''} at a time: "
                                f"a {width}x{height} window decoded {batch_size} at a time "
                                f"needs {whole / _GIB:.1f} GiB, {available / _GIB:.1f} GiB "
                                f"free{_recompute_note(recompute)}", batch, recompute)
    grid = largest_grid(h, w, overlap, lambda g: lean_tiles(g)[0] <= available)
    if grid is None:  # not even the smallest tiles: the usual refusal, with its advice
        check_window_fits(runner, height, width, window, window_overlap, batch_size,
                          GOP_FRAMES, frame_count, available)
        return WindowFit(None)
    recompute = lean_tiles(grid)[1]
    return WindowFit(grid, f"tiles: {grid.describe()}: a whole {width}x{height} window "
                            f"needs {whole / _GIB:.1f} GiB, {available / _GIB:.1f} GiB free"
                            f"{_recompute_note(recompute)}", recompute_backward=recompute)


def _recompute_line(recompute: int | None, width: int, height: int, whole: int | None = None,
                    available: int | None = None) -> str:
    """The information line of a window that fits only with its backward maps recomputed
    ("" when they are kept)."""
    if not recompute:
        return ""
    need = (f": a {width}x{height} window keeping them all needs {whole / _GIB:.1f} GiB, "
            f"{available / _GIB:.1f} GiB free" if whole is not None else
            f" for {width}x{height} windows to fit in memory")
    return f"recomputing backward maps ({_recompute_phrase(recompute)}){need}"


def tile_bytes(runner: Runner, grid: TileGrid, frames: int, batch_size: int,
               recompute_backward: int | None = None) -> int:
    """What a window of ``frames`` needs run in these tiles: one tile's window where the
    runner keeps its arrays, plus, when that is this host, the whole window's frames and
    stitched output (and the tile's output before it is added in)."""
    tile_h, tile_w = grid.size
    need = window_bytes(runner, frames, tile_h, tile_w, batch_size,
                        recompute_backward=recompute_backward)
    if not str(runner.device).startswith("cuda"):
        h, w = grid.frame
        per_pixel = 3 + _OUTPUT_CHANNELS * SCALE**2  # LR frame, x4 output
        need += frames * _FLOAT32 * (per_pixel * h * w + _OUTPUT_CHANNELS * SCALE**2 * tile_h
                                     * tile_w)
    return need


def largest_grid(height: int, width: int, overlap: int, fits) -> TileGrid | None:
    """The grid of fewest tiles (then the least computed area) over a padded ``height x
    width`` frame for which ``fits(grid)`` holds; None when not even the smallest does."""
    smallest = max(MIN_SIZE, 2 * overlap)
    most_rows = len(spans(height, min(smallest, height), overlap))
    most_cols = len(spans(width, min(smallest, width), overlap))
    grids = {}
    for rows in range(1, most_rows + 1):
        for cols in range(1, most_cols + 1):
            grid = TileGrid(spans(height, _side(height, rows, overlap, smallest), overlap),
                            spans(width, _side(width, cols, overlap, smallest), overlap),
                            overlap)
            grids[grid.rows, grid.cols] = grid
    for grid in sorted(grids.values(), key=lambda g: (len(g), _area(g))):
        if fits(grid):
            return grid
    return None


def _side(length: int, count: int, overlap: int, smallest: int) -> int:
    """The even tile side that covers ``length`` in ``count`` tiles overlapping by
    ``overlap``, at least ``smallest`` and at most ``length``."""
    side = -(-(length + (count - 1) * overlap) // count)
    side += side % SIZE_MULTIPLE
    return min(length, max(smallest, side))


def _area(grid: TileGrid) -> int:
    h, w = grid.size
    return len(grid) * h * w
