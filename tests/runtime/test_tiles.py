"""Spatial tiles: where they sit, how they are blended, seams against untiled output, and
the tiles chosen from the memory a window needs (a 1080p video included)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from support import (
    CALENDAR_LR,
    TILE_SEAM_ATOL,
    TILE_WEIGHT_ATOL,
    calendar_crop,
    invoke,
    needs_shared,
)

from hirn.core.errors import TileError, WindowMemoryError
from hirn.runtime import tiles
from hirn.runtime.driver import upscale_clip
from hirn.runtime.memory import RECOMPUTE_EVERY, frames_read, window_bytes
from hirn.runtime.tiles import (
    TileGrid,
    choose_tiles,
    feather,
    largest_grid,
    make_grid,
    parse_tile,
    spans,
    tile_bytes,
    upscale_tiled,
)
from hirn.runtime.windows import GOP_FRAMES

GIB = 2**30


# --- placement and weights ---------------------------------------------------------------------

@pytest.mark.parametrize("length, tile, overlap", [
    (180, 64, 16), (180, 64, 0), (144, 96, 32), (1080, 544, 16), (130, 64, 8), (64, 64, 16),
    (100, 128, 16)])
def test_tiles_cover_the_axis_as_few_as_overlap_as_asked(length, tile, overlap):
    placed = spans(length, tile, overlap)
    assert placed[0][0] == 0 and placed[-1][1] == length
    assert all(b - a == min(tile, length) for a, b in placed)
    shared = [a[1] - b[0] for a, b in zip(placed, placed[1:])]
    assert all(s == overlap for s in shared[:-1]) and all(s >= overlap for s in shared)
    if tile < length:  # as few as cover the axis with that overlap
        assert len(placed) == math.ceil((length - overlap) / (tile - overlap))


@pytest.mark.parametrize("axis", [spans(180, 64, 16), spans(180, 64, 0), spans(130, 64, 8),
                                  spans(64, 64, 0)])
def test_feather_weights_sum_to_one_and_ramp_across_each_overlap(axis):
    weights = feather(axis)
    total = np.zeros(4 * axis[-1][1])
    for (a, b), weight in zip(axis, weights):
        assert weight.shape == (4 * (b - a),) and weight.min() > 0
        total[4 * a:4 * b] += weight
    np.testing.assert_allclose(total, 1, atol=TILE_WEIGHT_ATOL)
    if len(axis) > 1 and axis[1][0] < axis[0][1]:  # the first tile: 1 up to its neighbour,
        # then falling towards its edge
        first, start = weights[0], 4 * axis[1][0]
        assert np.all(first[:start] == 1)
        assert np.all(np.diff(first[start:]) < 0) and first[-1] < 0.1


def _nearest(runner, frames, batch_size=4, keep=slice(None), recompute_backward=None):
    """A stand-in for the model that sees one pixel at a time: tiles cannot change it."""
    return np.repeat(np.repeat(frames[keep], 4, axis=2), 4, axis=3) * 0.5 + 0.25


@pytest.mark.parametrize("size, tile, overlap", [
    ((96, 128), (64, 64), 16), ((96, 128), (64, 64), 0), ((130, 70), (64, 66), 8),
    ((80, 200), (64, 96), 32)])
def test_tiles_are_placed_and_blended_exactly_for_a_pointwise_model(monkeypatch, size, tile,
                                                                     overlap):
    monkeypatch.setattr(tiles, "upscale_clip", _nearest)
    frames = np.random.default_rng(0).random((3, 3, *size), dtype=np.float32)
    grid = make_grid(*size, *tile, overlap)
    assert len(grid) > 1
    out = upscale_tiled(None, frames, grid, keep=slice(1, 3))
    np.testing.assert_allclose(out, _nearest(None, frames, keep=slice(1, 3)),
                               atol=TILE_WEIGHT_ATOL)


def test_tiles_the_network_cannot_take_are_refused():
    assert parse_tile("auto") == "auto" and parse_tile("None") == "none"
    assert parse_tile("256x320") == (256, 320)
    for text in ("256", "x64", "64x64x3", "big"):
        with pytest.raises(TileError, match="not a tile size"):
            parse_tile(text)
    for tile, overlap, message in [((63, 64), 0, "even and at least 64"),
                                   ((48, 64), 0, "even and at least 64"),
                                   ((64, 96), 40, "more than half a tile"),
                                   ((64, 64), -1, "cannot be negative"),
                                   ("auto", 40, "does not fit the smallest tiles")]:
        with pytest.raises(TileError, match=message):
            make_grid(200, 200, *tile, overlap) if isinstance(tile, tuple) else \
                choose_tiles(None, 200, 200, tile, overlap, 24, 4, 4, None, available=0)


# --- seams with the model ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def runner():
    import torch

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import HiRN

    torch.manual_seed(0)
    return TorchRunner(HiRN(mid_channels=16, num_blocks=1))


@needs_shared(CALENDAR_LR)
def test_one_tile_gives_the_untiled_output_bit_for_bit(runner, one_thread):
    frames = calendar_crop(3, 40, 48, 64, 96)
    grid = make_grid(64, 96, 64, 128, 16)
    assert len(grid) == 1
    assert np.array_equal(upscale_tiled(runner, frames, grid, keep=slice(1, 3)),
                          upscale_clip(runner, frames, keep=slice(1, 3)))


@needs_shared(CALENDAR_LR)
def test_tile_seams_stay_within_tolerance_with_an_overlap(runner, one_thread):
    """A Vid4 calendar crop in 64x64 tiles: blended over 16 px the seams stay within the
    tolerance of the untiled output; without overlap they do not (the tolerance sees them)."""
    frames = calendar_crop(3, 40, 48, 64, 128)
    whole = upscale_clip(runner, frames)
    blended = upscale_tiled(runner, frames, make_grid(64, 128, 64, 64, 16))
    cut = upscale_tiled(runner, frames, make_grid(64, 128, 64, 64, 0))
    seam = float(np.abs(blended - whole).max())
    print(f"max abs difference to untiled: {seam:.2e} (overlap 16), "
          f"{float(np.abs(cut - whole).max()):.2e} (overlap 0)")
    assert seam <= TILE_SEAM_ATOL
    assert np.abs(cut - whole).max() > TILE_SEAM_ATOL


# --- the choice of tiles -----------------------------------------------------------------------

def _runner(device: str = "cpu", mid_channels: int = 64):
    """What the memory figures read of a runner: the published model's size by default."""
    return SimpleNamespace(device=device, mid_channels=mid_channels, element_size=4)


def _whole(runner, height, width, batch=4, window=24, overlap=4):
    return window_bytes(runner, frames_read(window, overlap, GOP_FRAMES, None), height, width,
                        batch)


def test_auto_runs_whole_frames_when_the_window_fits():
    runner = _runner()
    choice = choose_tiles(runner, 180, 320, "auto", 16, 24, 4, 4, None,
                          available=_whole(runner, 180, 320))
    assert choice.grid is None and choice.line == ""


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_auto_tiles_a_1080p_window_that_does_not_fit(device):
    """1920x1080 with a quarter of what its whole window needs: the grid of fewest tiles
    that fits, said in one line."""
    runner = _runner(device)
    whole = _whole(runner, 1080, 1920)
    available = whole // 4
    choice = choose_tiles(runner, 1080, 1920, "auto", 16, 24, 4, 4, None, available=available)
    print(choice.line)
    grid = choice.grid
    frames = frames_read(24, 4, GOP_FRAMES, None)
    assert grid is not None and grid.frame == (1080, 1920) and len(grid) > 1
    recompute = choice.recompute_backward
    assert tile_bytes(runner, grid, frames, 4, recompute) <= available
    if recompute:  # only because the tile's backward maps are recomputed
        assert recompute == RECOMPUTE_EVERY and tile_bytes(runner, grid, frames, 4) > available
    fewer = largest_grid(1080, 1920, 16, lambda g: len(g) < len(grid) and min(
        tile_bytes(runner, g, frames, 4, r) for r in (None, RECOMPUTE_EVERY)) <= available)
    assert fewer is None  # no grid of fewer tiles fits, either way
    rows, cols = len(grid.rows), len(grid.cols)
    h, w = grid.size
    assert choice.line.startswith(f"tiles: {rows}x{cols} of {h}x{w} LR px, overlap 16: a "
                                  f"whole 1920x1080 window needs {whole / GIB:.1f} GiB, "
                                  f"{available / GIB:.1f} GiB free")
    assert ("recomputing backward maps (2 kept in 16 frames" in choice.line) == bool(recompute)


def test_a_window_that_fits_only_with_its_backward_maps_recomputed_is_not_tiled():
    """Between what the window needs recomputing its backward maps and what it needs keeping
    them: whole frames, recomputed (the same output), said in one line; below that, tiles."""
    runner = _runner()
    frames = frames_read(48, 8, GOP_FRAMES, None)
    kept = window_bytes(runner, frames, 540, 960, 1)
    lean = window_bytes(runner, frames, 540, 960, 1, recompute_backward=RECOMPUTE_EVERY)
    assert lean < 0.9 * kept
    choice = choose_tiles(runner, 540, 960, "auto", 16, 48, 8, 1, None, available=lean)
    assert choice.grid is None and choice.recompute_backward == RECOMPUTE_EVERY
    assert choice.line == (f"recomputing backward maps (2 kept in 16 frames; the same output, "
                           f"one more pass of the backward branch): a 960x540 window keeping "
                           f"them all needs {kept / GIB:.1f} GiB, {lean / GIB:.1f} GiB free")
    none = choose_tiles(runner, 540, 960, "none", 16, 48, 8, 1, None, available=lean)
    assert none.grid is None and none.recompute_backward == RECOMPUTE_EVERY
    assert choose_tiles(runner, 540, 960, "auto", 16, 48, 8, 1, None,
                        available=kept).recompute_backward is None
    assert choose_tiles(runner, 540, 960, "auto", 16, 48, 8, 1, None,
                        available=lean - 1).grid is not None


def test_a_540p_window_of_the_published_model_fits_a_24_gib_machine_decoded_fewer_at_a_time():
    """960x540 with the default window: decoded 4 frames at a time the window needs more
    than a 24 GiB machine has free (20 GiB here), so without --batch-size fewer frames are
    decoded at a time (the same output) rather than cutting the frames into tiles; with
    --batch-size 4 asked, auto tiles."""
    runner = _runner()
    available = 20 * GIB
    frames = frames_read(24, 4, GOP_FRAMES, None)
    assert _whole(runner, 540, 960) > available
    choice = choose_tiles(runner, 540, 960, "auto", 16, 24, 4, 4, None, available=available,
                          fit_batch=True)
    print(choice.line)
    batch = choice.batch_size
    assert choice.grid is None and batch is not None and 1 <= batch < 4
    recompute = choice.recompute_backward
    assert window_bytes(runner, frames, 540, 960, batch, recompute_backward=recompute) \
        <= available
    assert all(window_bytes(runner, frames, 540, 960, batch + 1, recompute_backward=r)
               > available for r in (None, RECOMPUTE_EVERY))  # the largest, either way
    assert choice.line.startswith(f"decoding {batch} frame")
    assert "a 960x540 window decoded 4 at a time needs" in choice.line
    asked = choose_tiles(runner, 540, 960, "auto", 16, 24, 4, 4, None, available=available)
    assert asked.grid is not None and asked.batch_size is None


def test_on_a_gpu_only_the_tile_s_window_takes_device_memory():
    """Frames and the stitched output wait in host memory: on a GPU the tile's window is all
    that counts; on the CPU the host holds both."""
    grid = make_grid(1080, 1920, 544, 656, 16)
    gpu, cpu = _runner("cuda:0"), _runner("cpu")
    assert tile_bytes(gpu, grid, 32, 4) == window_bytes(gpu, 32, 544, 656, 4)
    resident = 32 * 4 * (3 + 3 * 16) * 1080 * 1920  # LR frames and x4 output, float32
    assert tile_bytes(cpu, grid, 32, 4) > window_bytes(cpu, 32, 544, 656, 4) + resident


def test_when_no_tile_fits_auto_refuses_with_the_usual_advice():
    runner = _runner()
    with pytest.raises(WindowMemoryError, match="do not fit in memory"):
        choose_tiles(runner, 1080, 1920, "auto", 16, 24, 4, 4, None,
                     available=_whole(runner, 64, 64, batch=1))


def test_forced_tiles_run_or_are_refused_with_the_tile_that_fits():
    runner = _runner()
    choice = choose_tiles(runner, 1080, 1920, (256, 320), 16, 24, 4, 4, None,
                          available=2**50)
    assert choice.grid == make_grid(1080, 1920, 256, 320, 16)
    assert choice.line.startswith("tiles: 5x7 of 256x320 LR px, overlap 16")
    frames = frames_read(24, 4, GOP_FRAMES, None)
    available = tile_bytes(runner, make_grid(1080, 1920, 256, 256, 16), frames, 4)
    with pytest.raises(WindowMemoryError, match=r"tiles of 512x512 LR px do not fit in "
                                                r"memory.*use --tile (\d+)x(\d+)") as error:
        choose_tiles(runner, 1080, 1920, (512, 512), 16, 24, 4, 4, None, available=available)
    h, w = map(int, str(error.value).split("--tile ")[1].split(" ")[0].split("x"))
    advised = make_grid(1080, 1920, h, w, 16)
    assert min(tile_bytes(runner, advised, frames, 4, r) for r in (None, RECOMPUTE_EVERY)) \
        <= available


def test_none_never_tiles():
    runner = _runner()
    assert choose_tiles(runner, 1080, 1920, "none", 16, 24, 4, 4, None,
                        available=_whole(runner, 1080, 1920)).grid is None
    lean = window_bytes(runner, frames_read(24, 4, GOP_FRAMES, None), 1080, 1920, 4,
                        recompute_backward=RECOMPUTE_EVERY)
    assert choose_tiles(runner, 1080, 1920, "none", 16, 24, 4, 4, None,
                        available=lean).recompute_backward == RECOMPUTE_EVERY
    with pytest.raises(WindowMemoryError, match="do not fit in memory"):
        choose_tiles(runner, 1080, 1920, "none", 16, 24, 4, 4, None, available=lean - 1)


# --- hirn-run ----------------------------------------------------------------------------------

def test_hirn_run_takes_a_1080p_video_in_automatic_tiles(tmp_path, media, tiny_checkpoint,
                                                         monkeypatch):
    """A 1920x1080 frame whose window does not fit the memory reported: hirn-run says which
    tiles it takes and writes the whole x4 frame (a pointwise stand-in for the model keeps
    this fast; the model's seams are tested above)."""
    import cv2

    video = media.write_video(tmp_path / "hd.mp4",
                              media.synthetic_frames(1, width=1920, height=1080),
                              options={"crf": "0"})
    whole = window_bytes(_runner(mid_channels=16), 1, 1080, 1920)  # the tiny model, 1 frame
    monkeypatch.setattr(tiles, "available_bytes", lambda runner: whole // 3)
    monkeypatch.setattr(tiles, "upscale_clip", _nearest)
    out = tmp_path / "hd_x4"
    result = invoke(video, "-o", out, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    line = next(t for t in result.output.splitlines() if "tiles: " in t)
    print(line)
    assert "LR px, overlap 16: a whole 1920x1080 window needs" in line
    (png,) = out.iterdir()
    frame = cv2.imread(str(png))
    assert frame.shape == (4320, 7680, 3)
    # the stand-in maps [0, 1] to [0.25, 0.75]: a pixel no tile wrote would be black, one
    # written twice over would be brighter than 0.75 (colour conversion moves a few levels)
    assert 40 <= frame.min() and frame.max() <= 215 and frame.std() > 10


def test_hirn_run_refuses_tiles_it_cannot_run(tmp_path, media, tiny_checkpoint):
    video = media.write_video(tmp_path / "in.mp4", media.synthetic_frames(2))
    for args, message in [(["--tile", "60x64"], "even and at least 64"),
                          (["--tile", "wide"], "not a tile size"),
                          (["--tile", "64x64", "--tile-overlap", "40"], "more than half")]:
        result = invoke(video, "-o", tmp_path / "out.mp4", "--checkpoint", tiny_checkpoint,
                        *args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out.mp4").exists()


def test_a_tile_grid_describes_itself():
    grid = TileGrid(((0, 544), (528, 1072), (536, 1080)), ((0, 656), (640, 1296)), 16)
    assert len(grid) == 6 and grid.size == (544, 656) and grid.frame == (1080, 1296)
    assert grid.describe() == "3x2 of 544x656 LR px, overlap 16"


def test_hirn_run_recomputes_backward_maps_when_only_that_fits(tmp_path, media,
                                                               tiny_checkpoint, monkeypatch):
    """Memory reported between what a window needs recomputing its backward maps and what
    it needs keeping them: hirn-run says so, does not tile, and writes the very frames of a
    run with memory to spare."""
    import cv2

    video = media.write_video(tmp_path / "in.mkv", media.synthetic_frames(24, 64, 64),
                              codec="ffv1")
    frames = frames_read(16, 4, GOP_FRAMES, 24)
    runner = _runner(mid_channels=16)
    lean = window_bytes(runner, frames, 64, 64, 4, recompute_backward=RECOMPUTE_EVERY)
    assert lean < window_bytes(runner, frames, 64, 64, 4)
    outputs = []
    for available in (2**40, lean):
        monkeypatch.setattr(tiles, "available_bytes", lambda r, a=available: a)
        out = tmp_path / f"out_{available}"
        result = invoke(video, "-o", out, "--checkpoint", tiny_checkpoint, "--window", 16,
                        "--overlap", 4)
        assert result.exit_code == 0, result.output
        assert ("recomputing backward maps (2 kept in 16 frames" in result.output) == (
            available == lean), result.output
        assert "tiles:" not in result.output
        outputs.append([cv2.imread(str(p)) for p in sorted(out.iterdir())])
    assert len(outputs[0]) == 24
    assert all(np.array_equal(a, b) for a, b in zip(*outputs, strict=True))


def test_running_out_of_memory_names_the_batch_that_ran(tmp_path, media, tiny_checkpoint,
                                                        monkeypatch):
    """hirn-run chose to decode 2 frames at a time; memory then ran out anyway: the message
    gives the batch that ran (not the default that was asked), and no output is left."""
    from hirn.runtime import pipeline

    video = media.write_video(tmp_path / "in.mkv", media.synthetic_frames(24, 64, 64),
                              codec="ffv1")
    frames = frames_read(16, 4, GOP_FRAMES, 24)
    available = window_bytes(_runner(mid_channels=16), frames, 64, 64, 2)
    monkeypatch.setattr(tiles, "available_bytes", lambda runner: available)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(pipeline, "upscale_clip", out_of_memory)
    out = tmp_path / "out.mkv"
    result = invoke(video, "-o", out, "--checkpoint", tiny_checkpoint, "--window", 16,
                    "--overlap", 4)
    assert result.exit_code == 1, result.output
    assert "decoding 2 frames at a time: a 64x64 window decoded 4" in result.output
    assert ("out of memory while upscaling 64x64 windows of 16 + 2 x 4 frames on cpu, whole "
            "frames, decoding 2 frames at a time: lower --batch-size (now 2)") in result.output
    assert "no output was written" in result.output and not out.exists()
