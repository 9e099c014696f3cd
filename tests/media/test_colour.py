"""Colour as it came: a source's matrix, range, primaries and transfer are read, used to reach
RGB and to return to YUV, and written on the output. Sources are made here with PyAV (FFV1,
lossless, so the source's YUV values are exactly those generated); round trips are written
with lossless H.264 (CRF 0), so what differs is the conversion alone."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from support import COLOUR_ROUND_TRIP_MAX_MEAN, COLOUR_SHIFTED_MIN_MEAN

from hirn.media.colour import (
    BT709,
    BT2020_NCL,
    FULL,
    LIMITED,
    PQ,
    SMPTE170M,
    Colour,
    guess_matrix,
)
from hirn.media.video import open_sink, open_source

SD_BT601 = Colour(matrix=SMPTE170M, range=LIMITED, primaries=6, transfer=6)  # NTSC SD
FULL_BT709 = Colour(matrix=BT709, range=FULL, primaries=1, transfer=1)  # phone video
HDR_PQ = Colour(matrix=BT2020_NCL, range=LIMITED, primaries=9, transfer=PQ)
UNTAGGED = Colour(matrix=2, range=0, primaries=2, transfer=2)
FRAMES = 3


def make_source(path: Path, width: int, height: int, colour: Colour) -> Path:
    """A smooth colourful clip (in RGB gamut) converted to yuv420p with ``colour``'s matrix
    and range (BT.601 limited when untagged) and tagged with ``colour``, in FFV1."""
    yy, xx = np.mgrid[0:height, 0:width]
    matrix = colour.swscale_matrix if colour.matrix != 2 else 5  # swscale's ITU601
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        tags = colour.matrix, colour.range, colour.primaries, colour.transfer
        ctx.colorspace, ctx.color_range, ctx.color_primaries, ctx.color_trc = tags
        for i in range(FRAMES):
            rgb = np.stack([127.5 + 120 * np.sin(xx / 17 + i), 127.5 + 120 * np.cos(yy / 13),
                            127.5 + 120 * np.sin((xx + yy) / 23)], axis=-1)
            frame = av.VideoFrame.from_ndarray(np.rint(rgb).astype(np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace=matrix,
                                   dst_color_range=colour.range or LIMITED)
            frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc = tags
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def stream_colour(path: Path) -> Colour:
    """The colour tags of a file's video stream, as a reader finds them."""
    with av.open(str(path)) as container:
        ctx = container.streams.video[0].codec_context
        return Colour(ctx.colorspace, ctx.color_range, ctx.color_primaries, ctx.color_trc)


def yuv_frames(path: Path) -> np.ndarray:
    """Every frame's coded samples (``[N, H * 3 / 2, W]`` for yuv420p), no conversion."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray() for frame in container.decode(video=0)])


def round_trip(source_path: Path, output: Path, colour: Colour | None = None,
               codec: str = "h264") -> Path:
    """The source read to RGB and written back at the same size, with the source's colour
    (or ``colour``); H.264 at CRF 0 is lossless."""
    source = open_source(source_path)
    with open_sink(output, width=source.width, height=source.height, fps=source.fps,
                   time_base=source.time_base, codec=codec, crf=0 if codec == "h264" else None,
                   colour=colour or source.colour) as sink:
        for image, pts in source:
            sink.write(image, pts)
    return output


@pytest.mark.parametrize("colour, size", [(SD_BT601, (176, 144)), (FULL_BT709, (320, 240))],
                         ids=["bt601-limited-sd", "bt709-full-range"])
def test_colours_and_tags_survive_a_round_trip(tmp_path, colour, size):
    source = make_source(tmp_path / "source.mkv", *size, colour)
    assert open_source(source).colour == colour
    output = round_trip(source, tmp_path / "out.mkv")
    assert stream_colour(output) == colour
    difference = np.abs(yuv_frames(output).astype(float) - yuv_frames(source)).mean()
    print(f"{colour.describe()}: mean difference {difference:.3f} levels")
    assert difference < COLOUR_ROUND_TRIP_MAX_MEAN


def test_full_range_written_as_limited_comes_back_shifted(tmp_path):
    """What every output was before: BT.709 limited range whatever the source (the default
    still, for sources without colour such as image folders)."""
    source = make_source(tmp_path / "source.mkv", 320, 240, FULL_BT709)
    output = round_trip(source, tmp_path / "out.mkv", colour=Colour())
    assert stream_colour(output) == Colour(BT709, LIMITED, 2, 2)
    difference = np.abs(yuv_frames(output).astype(float) - yuv_frames(source)).mean()
    print(f"full range written as limited: mean difference {difference:.3f} levels")
    assert difference > COLOUR_SHIFTED_MIN_MEAN


def test_untagged_video_is_read_with_the_usual_guess(tmp_path):
    assert guess_matrix(720, 576) == guess_matrix(640, 480) == SMPTE170M
    assert guess_matrix(1280, 720) == guess_matrix(720, 1280) == BT709
    sd = open_source(make_source(tmp_path / "sd.mkv", 176, 144, UNTAGGED))
    assert sd.colour == Colour(SMPTE170M, LIMITED, 2, 2)
    # the output says what was assumed, so that a player does not guess BT.709 at 4x the size
    assert stream_colour(round_trip(sd.path, tmp_path / "sd_out.mkv")) == sd.colour

    # untagged HD is BT.709: swscale's own default (BT.601, what was used before) is not
    hd = open_source(make_source(tmp_path / "hd.mkv", 1280, 720, UNTAGGED))
    assert hd.colour == Colour(BT709, LIMITED, 2, 2)
    with av.open(str(hd.path)) as container:
        coded = next(container.decode(video=0))
        as_709 = coded.to_ndarray(format="rgb24", src_colorspace=1, src_color_range=LIMITED)
        as_default = coded.to_ndarray(format="rgb24")
    image = next(iter(hd)).image
    assert np.array_equal(image, as_709)
    assert not np.array_equal(image, as_default)


def test_hdr_keeps_its_tags_and_coded_values_with_a_note(tmp_path):
    source = open_source(make_source(tmp_path / "pq.mkv", 176, 144, HDR_PQ))
    assert source.colour == HDR_PQ
    assert any(note.startswith("HDR video (PQ") and "no tone mapping" in note
               for note in source.notes)
    output = round_trip(source.path, tmp_path / "out.mkv")
    assert stream_colour(output) == HDR_PQ
    difference = np.abs(yuv_frames(output).astype(float) - yuv_frames(source.path)).mean()
    print(f"{HDR_PQ.describe()}, PQ: mean difference {difference:.3f} levels")
    assert difference < COLOUR_ROUND_TRIP_MAX_MEAN


def test_ffv1_output_is_rgb_tagged_with_primaries_and_transfer(tmp_path):
    """FFV1 is written as RGB (bgr0): no matrix or range to tag, the RGB kept exactly."""
    source = make_source(tmp_path / "source.mkv", 176, 144, SD_BT601)
    output = round_trip(source, tmp_path / "out.mkv", codec="ffv1")
    tags = stream_colour(output)
    assert (tags.primaries, tags.transfer) == (SD_BT601.primaries, SD_BT601.transfer)
    written = [frame.image for frame in open_source(output)]
    read = [frame.image for frame in open_source(source)]
    assert all(np.array_equal(a, b) for a, b in zip(written, read, strict=True))
