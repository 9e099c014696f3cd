"""Video and image-folder I/O on real media: streaming reads, exact and lossy writes, audio
carried over, conversions with notes, clear errors, and atomic outputs."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from support import (
    AUDIO_SECONDS_ATOL,
    COLOUR_MAX_ERROR,
    FRAME_TIME_ATOL,
    GRAY_LUMA_MAX_LEVELS,
    H264_MIN_PSNR_DB,
    REENCODE_MIN_PSNR_DB,
    TEN_BIT_MIN_PSNR_DB,
    TEN_BIT_OUT_MIN_PSNR_DB,
    default_sigint,
    psnr,
)

from hirn.core.errors import DecodeError, HirnError, SinkError, SourceError
from hirn.media import video_writer
from hirn.media.video import open_sink, open_source, read_frames

STREAM_PEAK_FRAMES = 6  # Python-side memory while iterating, in frames (a 60-frame clip)
AUDIO_LEAD_MAX_FRAMES = 24  # one window of hirn-run (its default): how far, in frames, audio
                            # and video may run ahead of each other in the output's file order


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Every name in ``folder`` (hidden temporaries included)."""
    return sorted(p.name for p in folder.iterdir())


def audio_streams(path: Path) -> list[tuple[str, float, int]]:
    """(codec, duration in seconds, channels) of each audio stream."""
    with av.open(str(path)) as container:
        return [(s.codec_context.name, float(s.duration * s.time_base), s.channels)
                for s in container.streams.audio]


def copy_clip(source, path: Path, **options) -> Path:
    """Write every frame of ``source`` to ``path`` keeping its timing and audio."""
    with open_sink(path, width=source.width, height=source.height, fps=source.fps,
                   time_base=source.time_base, audio_from=source, input_path=source.path,
                   **options) as sink:
        for image, pts in source:
            sink.write(image, pts)
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def test_calendar_mp4_reads_with_size_rate_timestamps_and_audio(calendar_mp4, calendar_frames):
    source = open_source(calendar_mp4)
    assert (source.width, source.height) == (176, 144)
    assert source.frame_count == len(calendar_frames)
    assert source.fps == 25 and source.has_audio and source.notes == []
    frames = list(source)
    assert len(frames) == len(calendar_frames)
    step = 1 / (source.fps * source.time_base)  # pts per frame
    assert [f.pts for f in frames] == [round(i * step) for i in range(len(frames))]
    for frame, truth in zip(frames, calendar_frames):
        assert frame.image.shape == (144, 176, 3) and frame.image.dtype == np.uint8
        assert psnr(frame.image / 255.0, truth / 255.0) > H264_MIN_PSNR_DB
    # a second pass starts again from the first frame
    assert np.array_equal(next(iter(source)).image, frames[0].image)


def test_read_frames_takes_a_range(calendar_mp4):
    everything = read_frames(calendar_mp4)
    assert everything.shape == (10, 144, 176, 3)
    assert np.array_equal(read_frames(calendar_mp4, 3, 4), everything[3:7])
    with pytest.raises(SourceError, match="no frames from index 10"):
        read_frames(calendar_mp4, 10)


def test_iterating_holds_one_frame_at_a_time(tmp_path, media):
    frames = media.synthetic_frames(60, 176, 144)
    path = media.write_video(tmp_path / "long.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    source = open_source(path)
    tracemalloc.start()
    try:
        count = 0
        for image, _ in source:
            count += 1
            del image
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 60
    assert peak < STREAM_PEAK_FRAMES * frames[0].nbytes, f"peak {peak} bytes"


def test_reading_leaves_the_input_untouched(calendar_mp4, tmp_path):
    before = sha256(calendar_mp4), calendar_mp4.stat().st_mtime_ns
    copy_clip(open_source(calendar_mp4), tmp_path / "out.mkv", codec="ffv1")
    assert (sha256(calendar_mp4), calendar_mp4.stat().st_mtime_ns) == before


def test_image_folder_in_natural_order(tmp_path, media):
    frames = media.synthetic_frames(3)
    names = ["frame2.png", "frame10.png", "frame1.png"]  # natural order: 1, 2, 10
    folder = media.write_images(tmp_path / "frames", [cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
                                                      for f in frames], names)
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    source = open_source(folder, fps=Fraction(30000, 1001))
    assert (source.width, source.height, source.frame_count) == (64, 48, 3)
    assert source.fps == Fraction(30000, 1001) and source.time_base == Fraction(1001, 30000)
    assert not source.has_audio and source.notes == []
    got = list(source)
    assert [pts for _, pts in got] == [0, 1, 2]
    for (image, _), index in zip(got, [2, 0, 1]):  # frame1, frame2, frame10
        assert np.array_equal(image, frames[index])
    assert open_source(folder).fps == 25


# ---------------------------------------------------------------------------------------------
# Conversions, each said once


def test_gray_video_becomes_rgb_with_a_note(tmp_path, media):
    gray = [f[..., 0].copy() for f in media.synthetic_frames(3)]
    path = media.write_video(tmp_path / "gray.mkv", gray, codec="ffv1", pix_fmt="gray",
                             in_format="gray")
    source = open_source(path)
    images = [image for image, _ in source]
    assert source.notes == ["gray video (gray) converted to RGB"]
    for image, truth in zip(images, gray):
        assert all(np.array_equal(image[..., c], truth) for c in range(3))


def test_alpha_video_loses_alpha_with_a_note(tmp_path, media):
    frames = media.synthetic_frames(3)
    rgba = [np.dstack([f, np.full(f.shape[:2], 7, np.uint8)]) for f in frames]
    path = media.write_video(tmp_path / "alpha.mkv", rgba, codec="ffv1", pix_fmt="bgra",
                             in_format="rgba")
    source = open_source(path)
    assert source.notes == ["alpha channel of bgra dropped"]
    assert all(np.array_equal(image, truth) for (image, _), truth in zip(source, frames))


def test_vp9_alpha_beside_the_colour_is_dropped_with_a_note(tmp_path, media):
    """libvpx-vp9 keeps alpha in a WebM block of its own (alpha_mode 1), which FFmpeg's
    VP9 decoder skips: the frames decode as yuv420p, so only the tag tells."""
    frames = media.synthetic_frames(2)
    rgba = [np.dstack([f, np.full(f.shape[:2], 7, np.uint8)]) for f in frames]
    path = media.write_video(tmp_path / "alpha.webm", rgba, codec="libvpx-vp9",
                             pix_fmt="yuva420p", in_format="rgba",
                             options={"deadline": "realtime", "cpu-used": "8"})
    with av.open(str(path)) as container:
        assert container.streams.video[0].metadata.get("alpha_mode") == "1"
    source = open_source(path)
    assert source.notes == ["alpha channel of vp9 dropped (stored beside its colour: "
                            "alpha_mode 1)"]
    assert len(list(source)) == 2


@pytest.mark.parametrize("codec, pix_fmt, name", [("h264", "gray", "gray.mp4"),
                                                   ("h265", "gray10le", "gray.mkv"),
                                                   ("ffv1", "gray", "gray.mkv")])
def test_gray_output_keeps_the_tones_of_its_luma_with_a_note(codec, pix_fmt, name, tmp_path,
                                                             media):
    """The luma of the output's matrix, in the full range FFmpeg reads gray in (H.264 decodes
    4:0:0 as yuv420p, which reads the range tag: also written)."""
    frames = media.synthetic_frames(2)
    path = tmp_path / name
    with open_sink(path, width=64, height=48, fps=25, codec=codec, pix_fmt=pix_fmt,
                   crf=None if codec == "ffv1" else 0) as sink:
        for image in frames:
            sink.write(image)
    assert sink.notes == [f"written in {pix_fmt}: luma only, without colour"]
    got = read_frames(path).astype(float)
    got = got / 65535 * 255 if got.max() > 255 else got
    luma = np.stack(frames) @ np.array([0.2126, 0.7152, 0.0722])  # BT.709, the default
    assert np.abs(got - luma[..., None]).max() <= GRAY_LUMA_MAX_LEVELS


def test_ten_bit_video_is_read_as_16_bit(tmp_path, media):
    frames = media.synthetic_frames(3)
    # 4:4:4 so that only the bit depth, not chroma subsampling, changes the frames
    path = media.write_video(tmp_path / "ten.mkv", frames, pix_fmt="yuv444p10le",
                             options={"crf": "0"})
    source = open_source(path)
    assert source.notes == [] and source.sampling.bits == 10  # kept (tests/test_bit_depth.py)
    for (image, _), truth in zip(source, frames):
        assert image.dtype == np.uint16
        assert psnr(image / 65535.0, truth / 255.0) > TEN_BIT_MIN_PSNR_DB


def test_interlaced_video_is_noted(tmp_path, media):
    path = media.write_video(tmp_path / "tv.mp4", media.synthetic_frames(2),
                             options={"x264-params": "tff=1"})  # interlaced, top field first
    assert open_source(path).notes == [
        "the video is interlaced: its frames are taken as stored, not deinterlaced"]


@pytest.mark.parametrize("degrees, turns, way", [(-90, -1, "90 degrees clockwise"),
                                                  (90, 1, "90 degrees counterclockwise"),
                                                  (180, 2, "180 degrees")])
def test_rotated_video_comes_out_upright(tmp_path, media, degrees, turns, way):
    frames = media.synthetic_frames(2)
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:  # PNG in MP4: lossless, with a display matrix
        stream = out.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
        stream.set_display_rotation(degrees)
        media.encode_frames(out, stream, frames)
    source = open_source(path)
    assert (source.width, source.height) == ((48, 64) if turns % 2 else (64, 48))
    assert source.notes == [f"frames turned {way}, as the video's display rotation asks"]
    for (image, _), truth in zip(source, frames):
        assert np.array_equal(image, np.rot90(truth, turns))


def test_gray_alpha_and_16_bit_images_with_notes(tmp_path, media):
    rgb = media.synthetic_frames(1)[0]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cases = {
        "gray": (bgr[..., 0], np.repeat(bgr[..., :1], 3, -1), "gray images converted to RGB"),
        "alpha": (np.dstack([bgr, np.full(rgb.shape[:2], 9, np.uint8)]), rgb,
                  "alpha channel dropped"),
    }
    for name, (image, expected, note) in cases.items():
        source = open_source(media.write_images(tmp_path / name, [image, image]))
        got = [frame.image for frame in source]
        assert source.notes == [note], name
        assert all(np.array_equal(g, expected) for g in got), name
    # 16 bits are kept (tests/runtime/test_bit_depth.py), 8-bit images after them widened
    deep = (bgr.astype(np.int32) * 257 + 100).clip(0, 65535).astype(np.uint16)
    source = open_source(media.write_images(tmp_path / "deep", [deep, bgr]))
    first, second = (frame.image for frame in source)
    assert source.notes == [] and first.dtype == second.dtype == np.uint16
    assert np.array_equal(first, deep[..., ::-1])
    assert np.array_equal(second, rgb.astype(np.uint16) * 257)


# ---------------------------------------------------------------------------------------------
# Inputs that cannot be read


def test_missing_empty_text_and_single_image_inputs(tmp_path):
    cases = {
        tmp_path / "nowhere.mp4": "does not exist",
        tmp_path / "empty.mp4": "is empty",
        tmp_path / "readme.txt": "not a video",
        tmp_path / "random.mp4": "not a video FFmpeg can read",
        tmp_path / "picture.png": "single image",
        tmp_path / "picture.bin": "single image",  # a PNG without its extension
    }
    (tmp_path / "empty.mp4").touch()
    (tmp_path / "readme.txt").write_text("just some notes\n" * 20)
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    cv2.imwrite(str(tmp_path / "picture.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "picture.bin").write_bytes((tmp_path / "picture.png").read_bytes())
    for path, message in cases.items():
        with pytest.raises(SourceError, match=message) as caught:
            open_source(path)
        assert str(path) in str(caught.value)
        assert isinstance(caught.value, HirnError)


def test_videos_without_video_or_frames(tmp_path, media):
    audio_only = tmp_path / "sound.m4a"
    with av.open(str(audio_only), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        chunk = av.AudioFrame.from_ndarray(media.tone(0.2, 16000, 1), format="fltp",
                                           layout="mono")
        chunk.sample_rate, chunk.pts = 16000, 0
        out.mux(stream.encode(chunk))
        out.mux(stream.encode(None))
    with pytest.raises(SourceError, match="has no video stream .it holds audio"):
        open_source(audio_only)
    for name, codec, pix_fmt in [("zero.mkv", "ffv1", "bgr0"), ("zero.mp4", "libx264",
                                                                  "yuv420p")]:
        path = media.write_video(tmp_path / name, [], codec=codec, pix_fmt=pix_fmt)
        with pytest.raises(SourceError, match="empty"):
            open_source(path)


def test_videos_cut_short_keep_the_frames_decoded_with_a_note(tmp_path, media):
    """A cut that stops the demuxer quietly loses no frame decoded before it: the container's
    count (MP4) or duration (matroska, which counts no frames) is named in a note."""
    frames = media.synthetic_frames(30)
    mkv = media.write_video(tmp_path / "clip.mkv", frames)
    # an MP4 with its index first ("faststart") keeps its frame count
    mp4 = media.write_video(tmp_path / "clip.mp4", frames,
                            container_options={"movflags": "+faststart"})
    for path, said in ((mkv, "ends at {seconds} s but its container says it lasts 1.20 s: "
                              "it may have been cut short"),
                       (mp4, "its container counts 30 frames but {read} were decoded")):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        source = open_source(path)
        stamps = [pts for _, pts in source]
        read = len(stamps)
        assert 0 < read < 30
        seconds = f"{float((stamps[-1] - stamps[0]) * source.time_base) + 1 / 25:.2f}"
        assert any(said.format(seconds=seconds, read=read) in text
                   and f"the output holds the {read} frames decoded" in text
                   for text in source.notes), source.notes
    # an MP4 with its index at the end cannot be opened without it
    cut = media.write_video(tmp_path / "cut.mp4", frames)
    cut.write_bytes(cut.read_bytes()[:-2000])
    with pytest.raises(SourceError, match="not a video FFmpeg can read"):
        open_source(cut)


def test_bad_image_folders(tmp_path, media):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "list.txt").write_text("no images here")
    with pytest.raises(SourceError, match="holds no images"):
        open_source(empty)

    frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in media.synthetic_frames(3)]
    # PNG sizes are checked from their headers before any frame is read
    mixed = media.write_images(tmp_path / "mixed", frames[:2] + [frames[2][:40]])
    with pytest.raises(SourceError, match=r"002.png is 64x40 but 000.png is 64x48"):
        open_source(mixed)
    # other formats when they are read
    mixed_jpg = media.write_images(tmp_path / "mixed_jpg", frames[:2] + [frames[2][:, :30]],
                                   ext=".jpg")
    source = open_source(mixed_jpg)
    with pytest.raises(SourceError, match=r"002.jpg is 30x48 but 000.jpg is 64x48"):
        list(source)

    broken = media.write_images(tmp_path / "broken", frames)
    (broken / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    with pytest.raises(DecodeError, match="001.png is not an image") as caught:
        list(open_source(broken))
    assert caught.value.frames_read == 1


# ---------------------------------------------------------------------------------------------
# Writing


def test_mp4_round_trip_keeps_timestamps_and_remuxes_audio(calendar_mp4, tmp_path):
    source = open_source(calendar_mp4)
    out = copy_clip(source, tmp_path / "copy.mp4")
    assert leftovers(tmp_path) == ["copy.mp4"]
    result = open_source(out)
    assert (result.width, result.height, result.fps) == (176, 144, 25)
    assert result.frame_count == 10 and result.has_audio
    assert [pts for _, pts in result] == [pts for _, pts in source]
    for (a, _), (b, _) in zip(result, source):
        assert psnr(a / 255.0, b / 255.0) > REENCODE_MIN_PSNR_DB
    # the AAC packets are copied byte for byte, not re-encoded
    with av.open(str(calendar_mp4)) as c_in, av.open(str(out)) as c_out:
        packets = [[bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]
                   for c in (c_in, c_out)]
        assert packets[0] == packets[1] and len(packets[0]) > 5
    with av.open(str(out)) as c_out:  # ... and interleaved with the video, not appended
        order = [p.stream.type for p in c_out.demux() if p.size]
        assert order.index("audio") < len(order) - 1 - order[::-1].index("video")
    (codec_in, seconds_in, channels), = audio_streams(calendar_mp4)
    (codec_out, seconds_out, channels_out), = audio_streams(out)
    assert (codec_out, channels_out) == (codec_in, channels) == ("aac", 2)
    assert seconds_out == pytest.approx(seconds_in, abs=AUDIO_SECONDS_ATOL)
    assert seconds_in == pytest.approx(0.4, abs=AUDIO_SECONDS_ATOL)


def packet_times(path: Path) -> list[tuple[str, float]]:
    """``(stream type, start in seconds)`` of every timed packet, in file order (by byte
    position: the MP4 demuxer hands out packets by time once the streams drift apart)."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.stream.type, float(p.pts * p.time_base))
                   for p in container.demux() if p.size and p.pts is not None]
    assert all(pos is not None and pos >= 0 for pos, _, _ in packets)
    return [(kind, start) for _, kind, start in sorted(packets)]


@pytest.mark.parametrize("codec, name", [("h264", "long.mp4"), ("ffv1", "long.mkv")])
def test_audio_is_interleaved_with_the_video(tmp_path, media, codec, name):
    """Audio is copied while the frames are written, never buffered whole: in the output,
    read in file order, neither stream runs ahead of the other by more than a window of
    frames. The clip is longer than the 10 s the muxer itself would reorder."""
    seconds = 12
    frames = media.synthetic_frames(seconds * media.fps, width=32, height=32)
    source_name = "in.mkv" if codec == "ffv1" else "in.mp4"
    path = media.write_video(tmp_path / source_name, frames, audio=("aac", 8000,
                                                                    media.tone(seconds, 8000, 1)))
    out = copy_clip(open_source(path), tmp_path / name, codec=codec)
    times = packet_times(out)
    assert {kind for kind, _ in times} == {"video", "audio"}
    lead = AUDIO_LEAD_MAX_FRAMES / media.fps
    latest = {"video": 0.0, "audio": 0.0}  # the latest start of each stream so far
    for kind, start in times:
        other = "audio" if kind == "video" else "video"
        assert start <= latest[other] + lead, (kind, start, latest)
        latest[kind] = max(latest[kind], start)
    assert latest["audio"] == pytest.approx(seconds, abs=0.2)


def test_audio_the_container_refuses_is_encoded_to_aac(tmp_path, media):
    frames = media.synthetic_frames(10)
    path = media.write_video(tmp_path / "pcm.mkv", frames, codec="ffv1", pix_fmt="bgr0",
                             audio=("pcm_u8", 16000, media.tone(0.4, 16000, 1)))
    out = copy_clip(open_source(path), tmp_path / "pcm.mp4")  # MP4 takes no 8-bit PCM
    (codec, seconds, channels), = audio_streams(out)
    assert (codec, channels) == ("aac", 1)
    assert seconds == pytest.approx(0.4, abs=AUDIO_SECONDS_ATOL)


@pytest.mark.parametrize("codec, name", [("ffv1", "out.mkv"), ("png", "out")])
def test_lossless_outputs_read_back_exactly(calendar_mp4, tmp_path, codec, name):
    source = open_source(calendar_mp4)
    out = copy_clip(source, tmp_path / name, codec=codec)
    assert np.array_equal(read_frames(out), read_frames(calendar_mp4))
    result = open_source(out)
    assert (result.width, result.height, result.frame_count) == (176, 144, 10)
    if codec == "png":
        assert sorted(p.name for p in out.iterdir())[:2] == ["000000.png", "000001.png"]
        assert not result.has_audio
    else:
        assert result.has_audio and [p for _, p in result] != []


@pytest.mark.parametrize("codec, name", [("h265", "out.mp4"), ("h264", "out.mov"),
                                         ("h264", "out.mkv")])
def test_other_codecs_and_containers(tmp_path, media, codec, name):
    frames = media.synthetic_frames(4)
    with open_sink(tmp_path / name, width=64, height=48, fps=30, codec=codec) as sink:
        for image in frames:
            sink.write(image)  # no pts: frames numbered at 30 frames/s
    result = open_source(tmp_path / name)
    assert (result.width, result.height, result.fps, result.frame_count) == (64, 48, 30, 4)
    times = [pts * result.time_base for _, pts in result]
    assert np.allclose(np.diff([float(t) for t in times]), 1 / 30, atol=FRAME_TIME_ATOL)
    with av.open(str(tmp_path / name)) as container:
        assert container.streams.video[0].codec_context.name == {"h264": "h264",
                                                                 "h265": "hevc"}[codec]


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_colours_survive_yuv_encoding(tmp_path, codec):
    """Saturated flat blocks come back within a few levels: the matrix used to encode (BT.709,
    tagged) is the one used to decode; a BT.601/709 mix-up is off by 10-30 levels here."""
    blocks = np.random.default_rng(1).integers(0, 256, (6, 8, 3)).astype(np.uint8)
    image = np.kron(blocks, np.ones((16, 16, 1), np.uint8))  # [96, 128, 3]
    with open_sink(tmp_path / "flat.mp4", width=128, height=96, fps=25, codec=codec,
                   crf=0) as sink:
        sink.write(image)
    back = read_frames(tmp_path / "flat.mp4")[0].astype(int)
    inner = np.abs(back - image).reshape(6, 16, 8, 16, 3)[:, 3:13, :, 3:13]  # no edges
    assert inner.max() <= COLOUR_MAX_ERROR


def test_one_frame_h265_mp4_has_sane_timestamps(tmp_path):
    """libx265 leaves a lone frame's dts uninitialised: before the sink fixed it, these
    writes failed (or kept a garbage dts) at a rate that varies per process, from none to
    most of them; so two processes of 12 tries (about 5 s of CPU)."""
    script = textwrap.dedent("""
        import sys
        import av, numpy as np
        from hirn.media.video import open_sink
        blocks = np.random.default_rng(1).integers(0, 256, (6, 8, 3)).astype(np.uint8)
        image = np.kron(blocks, np.ones((16, 16, 1), np.uint8))
        path = sys.argv[1]
        for attempt in range(12):
            with open_sink(path, width=128, height=96, fps=25, codec="h265", crf=0,
                           overwrite=True) as sink:
                sink.write(image)
            with av.open(path) as container:
                stamps = [(p.pts, p.dts) for p in container.demux(video=0) if p.size]
            assert stamps == [(0, 0)], (attempt, stamps)
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"{run}.mp4")],
                             stderr=subprocess.PIPE, text=True) for run in range(2)]
    for run in runs:
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr[-2000:]


def test_a_lone_frames_dts_is_set_to_its_pts(tmp_path):
    """The same fix made deterministic: the encoder's flush hands the lone frame's packet
    over with a garbage dts (as libx265 sometimes does); the sink writes it with dts = pts."""
    class GarbageDts:  # the sink's stream, its flushed packets given a garbage dts
        def __init__(self, stream):
            self._stream = stream

        def __getattr__(self, name):
            return getattr(self._stream, name)

        def encode(self, frame=None):
            packets = self._stream.encode(frame)
            for packet in packets if frame is None else ():
                packet.dts = 987_654
            return packets

    path = tmp_path / "one.mp4"
    with open_sink(path, width=64, height=48, fps=25, codec="h265", crf=0) as sink:
        sink._stream = GarbageDts(sink._stream)
        sink.write(np.zeros((48, 64, 3), np.uint8))
    with av.open(str(path)) as container:
        assert [(p.pts, p.dts) for p in container.demux(video=0) if p.size] == [(0, 0)]


def test_crf_sets_the_quality(tmp_path, calendar_frames):
    sizes = {}
    for crf in (10, 35):
        with open_sink(tmp_path / f"q{crf}.mp4", width=176, height=144, fps=25, crf=crf) as sink:
            for image in calendar_frames:
                sink.write(image)
        sizes[crf] = (tmp_path / f"q{crf}.mp4").stat().st_size
    assert sizes[10] > 3 * sizes[35]


def test_codec_and_size_mistakes_are_refused(tmp_path):
    size = dict(width=64, height=48, fps=25)
    cases = [
        (dict(path=tmp_path / "a.mp4", codec="ffv1"), "FFV1 is written to .mkv only"),
        (dict(path=tmp_path / "a.mp4", codec="png"), "png writes a folder"),
        (dict(path=tmp_path / "frames", codec="h264"), "h264 writes a video"),
        (dict(path=tmp_path / "a.avi"), "cannot tell what to write"),
        (dict(path=tmp_path / "a.mp4", codec="vp9"), "unknown codec"),
        (dict(path=tmp_path / "a.mp4", width=7, height=9), "even width and height"),
        (dict(path=tmp_path / "a.mkv", codec="ffv1", crf=10), "crf applies to h264"),
        (dict(path=tmp_path / "a.mp4", crf=60), "crf must be within 0-51"),
        (dict(path=tmp_path / "missing" / "a.mp4"), "does not exist: create it"),
    ]
    for options, message in cases:
        with pytest.raises(SinkError, match=message):
            open_sink(**{**size, **options})
    assert leftovers(tmp_path) == []
    # odd sizes are fine losslessly
    with open_sink(tmp_path / "odd.mkv", width=7, height=9, fps=25, codec="ffv1") as sink:
        sink.write(np.zeros((9, 7, 3), np.uint8))
    assert read_frames(tmp_path / "odd.mkv").shape == (1, 9, 7, 3)


def test_bad_frames_are_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match=r"expected a \[48, 64, 3\] uint8"):
        with open_sink(tmp_path / "a.mkv", width=64, height=48, fps=25, codec="ffv1") as sink:
            sink.write(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(ValueError, match="pts must increase"):
        with open_sink(tmp_path / "a.mkv", width=64, height=48, fps=25, codec="ffv1") as sink:
            sink.write(np.zeros((48, 64, 3), np.uint8), 5)
            sink.write(np.zeros((48, 64, 3), np.uint8), 5)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Atomic outputs


@pytest.mark.parametrize("name", ["out.mp4", "out.mkv", "frames"])
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_with_leaves_nothing(tmp_path, media, name, failure):
    frames = media.synthetic_frames(3)
    codec = "ffv1" if name.endswith(".mkv") else None
    with pytest.raises(failure):
        with open_sink(tmp_path / name, width=64, height=48, fps=25, codec=codec) as sink:
            sink.write(frames[0])
            sink.write(frames[1])
            assert len(leftovers(tmp_path)) == 1  # the hidden temporary, while writing
            assert leftovers(tmp_path)[0].startswith(".out" if codec or "." in name else ".fr")
            raise failure()
    assert leftovers(tmp_path) == []


def test_abort_and_empty_outputs_leave_nothing(tmp_path, media):
    sink = open_sink(tmp_path / "a.mp4", width=64, height=48, fps=25)
    sink.write(media.synthetic_frames(1)[0])
    sink.abort()
    for name in ("b.mp4", "frames"):
        with pytest.raises(SinkError, match="no frames were written"):
            with open_sink(tmp_path / name, width=64, height=48, fps=25):
                pass
    assert leftovers(tmp_path) == []


def test_existing_outputs_need_overwrite(tmp_path, media):
    frames = media.synthetic_frames(2)
    target = tmp_path / "out.mp4"
    target.write_bytes(b"precious")
    with pytest.raises(SinkError, match="already exists: pass overwrite=True"):
        open_sink(target, width=64, height=48, fps=25)
    assert target.read_bytes() == b"precious" and leftovers(tmp_path) == ["out.mp4"]
    with open_sink(target, width=64, height=48, fps=25, overwrite=True) as sink:
        sink.write(frames[0])
    assert open_source(target).frame_count == 1 and leftovers(tmp_path) == ["out.mp4"]

    folder = media.write_images(tmp_path / "frames", [frames[0]] * 3)
    with pytest.raises(SinkError, match="already exists"):
        open_sink(folder, width=64, height=48, fps=25)
    with open_sink(folder, width=64, height=48, fps=25, overwrite=True) as sink:
        sink.write(frames[1])
    assert leftovers(folder) == ["000000.png"] and sorted(leftovers(tmp_path)) == [
        "frames", "out.mp4"]
    # a folder of images as the audio source: nothing to copy, and it is still protected
    with open_sink(tmp_path / "quiet.mp4", width=64, height=48, fps=25,
                   audio_from=folder) as sink:
        sink.write(frames[0])
    assert not open_source(tmp_path / "quiet.mp4").has_audio
    with pytest.raises(SinkError, match="is the input"):
        open_sink(folder, width=64, height=48, fps=25, overwrite=True, audio_from=folder)
    (tmp_path / "quiet.mp4").unlink()
    (folder / "keep.txt").write_text("not ours")
    with pytest.raises(SinkError, match="holds files other than PNGs"):
        open_sink(folder, width=64, height=48, fps=25, overwrite=True)
    # an empty folder is a place made for the output, not something to protect
    (tmp_path / "new").mkdir()
    with open_sink(tmp_path / "new", width=64, height=48, fps=25) as sink:
        sink.write(frames[0])
    assert leftovers(tmp_path / "new") == ["000000.png"]


def test_output_equal_to_input_is_refused(calendar_mp4, tmp_path):
    link = tmp_path / "link.mp4"
    link.symlink_to(calendar_mp4)
    before = sha256(calendar_mp4)
    for output in (calendar_mp4, link):
        for key in ("input_path", "audio_from"):
            with pytest.raises(SinkError, match="is the input"):
                open_sink(output, width=176, height=144, fps=25, overwrite=True,
                          **{key: calendar_mp4})
    assert sha256(calendar_mp4) == before
    assert leftovers(calendar_mp4.parent) == ["calendar.mp4"]


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "no space left while writing"),
                                           (errno.EACCES, "cannot write into")])
@pytest.mark.parametrize("name", ["out.mp4", "frames"])
def test_disk_full_and_permission_errors_name_the_path(tmp_path, media, monkeypatch, code,
                                                       message, name):
    def fail(*args):
        raise OSError(code, os.strerror(code))

    # the PNG sink writes through write_file; the video sink through FFmpeg, whose errors
    # PyAV raises as OSError subclasses with the same errno
    monkeypatch.setattr(video_writer, "write_file", fail)
    monkeypatch.setattr(video_writer.VideoSink, "_write", lambda self, image, pts: fail())
    with pytest.raises(SinkError, match=message) as caught:
        with open_sink(tmp_path / name, width=64, height=48, fps=25) as sink:
            sink.write(media.synthetic_frames(1)[0])
    assert str(tmp_path) in str(caught.value)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not stop root (or this OS) from writing")
def test_an_unwritable_folder_is_refused_up_front(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(SinkError, match=f"cannot write into {locked}"):
            open_sink(locked / "a.mp4", width=64, height=48, fps=25)
    finally:
        locked.chmod(0o700)


def test_ctrl_c_leaves_no_output(tmp_path):
    """SIGINT to a process writing a video: it exits non-zero and leaves nothing behind."""
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from hirn.media.video import open_sink
        with open_sink({str(tmp_path / "out.mp4")!r}, width=64, height=48, fps=25) as sink:
            for index in range(10_000):
                sink.write(np.full((48, 64, 3), index % 256, np.uint8))
                if index == 5:
                    print("writing", flush=True)
                time.sleep(0.01)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert process.stdout.readline().strip() == "writing"
    assert len(leftovers(tmp_path)) == 1  # the temporary exists while it writes
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr
    assert leftovers(tmp_path) == []


def test_a_killed_writers_temporary_is_removed_by_the_next_run(tmp_path):
    """SIGKILL cannot be cleaned up after; the next sink for that output removes the leftover
    of the dead process, never a live writer's (here: our own) or another output's."""
    script = textwrap.dedent(f"""
        import time
        import numpy as np
        from hirn.media.video import open_sink
        with open_sink({str(tmp_path / "out.mp4")!r}, width=64, height=48, fps=25) as sink:
            sink.write(np.zeros((48, 64, 3), np.uint8))
            print("writing", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.kill()
    process.wait(timeout=30)
    (name,) = leftovers(tmp_path)
    stale = tmp_path / name
    other = tmp_path / stale.name.replace(".out.", ".other.")
    other.write_bytes(b"")  # the same dead writer's leftover for another output
    live = video_writer.make_temp(tmp_path / "out.mp4", folder=False)  # our pid: alive
    assert not stale.exists()  # make_temp already swept it
    stale.write_bytes(b"")  # and once more, for the sink below
    with open_sink(tmp_path / "out.mp4", width=64, height=48, fps=25) as sink:
        sink.write(np.zeros((48, 64, 3), np.uint8))
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "out.mp4").is_file()


def test_sample_aspect_ratio_is_carried(tmp_path, media):
    frames = media.synthetic_frames(2)
    with open_sink(tmp_path / "a.mp4", width=64, height=48, fps=25,
                   sample_aspect_ratio=Fraction(16, 15)) as sink:
        for image in frames:
            sink.write(image)
    assert open_source(tmp_path / "a.mp4").sample_aspect_ratio == Fraction(16, 15)
    assert math.isclose(float(open_source(tmp_path / "a.mp4").fps), 25)


UNEVEN_NOTE = ("the input's frames are not evenly spaced in time (a variable frame rate): a "
               "folder of PNGs keeps their order, not their timing; write a video (.mkv, "
               ".mp4) to keep it")


# (fps, time base, steps of evenly spaced frames, the smallest step that is not): the slack
# is one tick (29.97 frames/s in milliseconds alternates 33 and 34) or 1% of the frame
# period (36 of 3600 ticks at 25 frames/s in 1/90000 s), whichever is more
@pytest.mark.parametrize("fps, time_base, even, uneven", [
    (Fraction(30000, 1001), Fraction(1, 1000), (33, 34, 33), 35),
    (25, Fraction(1, 90000), (3636, 3564), 3637),
])
def test_a_png_folder_notes_uneven_timing_once(tmp_path, fps, time_base, even, uneven):
    """PNGs keep no timestamps: frames at the frame rate write no note, uneven ones one note,
    however many gaps."""
    def write(name: str, steps) -> list[str]:
        with open_sink(tmp_path / name, width=16, height=16, fps=fps,
                       time_base=time_base) as sink:
            pts = 0
            for step in (0, *steps):
                pts += step
                sink.write(np.zeros((16, 16, 3), np.uint8), pts)
        assert len(list((tmp_path / name).iterdir())) == len(steps) + 1
        return sink.notes

    assert write("even", even * 2) == []
    assert write("gaps", (*even, uneven, *even, uneven, *even)) == [UNEVEN_NOTE]


def test_a_wrong_frame_or_a_closed_sink_is_refused_clearly(tmp_path):
    path = tmp_path / "frames"
    with open_sink(path, width=16, height=8, fps=25) as sink:
        sink.write(np.zeros((8, 16, 3), np.uint8))
        for frame, got in [(np.zeros((16, 8, 3), np.uint8), "shape (16, 8, 3) dtype uint8"),
                           (np.zeros((8, 16, 3), np.float32), "shape (8, 16, 3) dtype float32"),
                           ([[0, 0, 0]], "shape None dtype list")]:
            with pytest.raises(ValueError) as error:
                sink.write(frame)
            assert str(error.value) == (f"expected a [8, 16, 3] uint8 or uint16 RGB frame, "
                                        f"got {got}")
    assert len(list(path.iterdir())) == 1  # the refused frames wrote nothing
    with pytest.raises(RuntimeError) as error:
        sink.write(np.zeros((8, 16, 3), np.uint8))
    assert str(error.value) == f"the sink for {path} is already closed"


def test_frames_without_timestamps_are_numbered_at_the_frame_rate(tmp_path):
    """In the sink's time base (here milliseconds), not in frames."""
    path = tmp_path / "out.mkv"
    with open_sink(path, width=16, height=16, fps=25, codec="ffv1",
                   time_base=Fraction(1, 1000)) as sink:
        for value in (0, 100, 200):
            sink.write(np.full((16, 16, 3), value, np.uint8))
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    assert times == pytest.approx([0.0, 0.04, 0.08])


def test_16_bit_frames_are_written_as_ten_bit_video(tmp_path, media):
    """uint16 RGB in, 10-bit H.265 out (converted to YUV with the BT.709 matrix), read back
    as the same 16-bit frames within the ten-bit precision."""
    frames = media.synthetic_frames(3)
    deep = [frame.astype(np.uint16) * 257 for frame in frames]
    path = tmp_path / "ten.mkv"
    with open_sink(path, width=64, height=48, fps=25, codec="h265", crf=0,
                   pix_fmt="yuv444p10le") as sink:
        for image in deep:
            sink.write(image)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p10le"
    source = open_source(path)
    for (image, _), truth in zip(source, deep, strict=True):
        assert image.dtype == np.uint16
        assert psnr(image / 65535.0, truth / 65535.0) > TEN_BIT_OUT_MIN_PSNR_DB
