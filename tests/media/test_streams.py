"""Everything besides the frames comes through ``hirn-run``, or a note names it; damage the
decoder reports (a bit-flipped MP4) is named too.

The inputs are made here with PyAV: an MKV with two audio tracks (languages, titles, one
default), an SRT subtitle (forced), two chapters, a font attachment and a title.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from support import assert_clean_failure, invoke, names

from hirn.media.video import open_sink, open_source, read_frames

THREADS = ("--threads", "1")  # one thread runs fastest on a loaded 2-core machine
FONT = b"\x00\x01\x00\x00" + bytes(range(256))  # an attachment's bytes, kept as they are
SUBTITLE = "Hello, world"
CHAPTERS = [("Intro", 0, 80), ("End", 80, 160)]  # title, start, end in ms
DEFAULT = av.stream.Disposition.default
FORCED = av.stream.Disposition.forced


def write_rich_mkv(path: Path, media, frames) -> Path:
    """An MKV of ``frames`` (H.264) with everything a film file carries besides them."""
    height, width = frames[0].shape[:2]
    fps = media.fps
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.metadata["language"] = "jpn"
        tracks = []
        for language, title, layout, default in [("eng", "English", "stereo", True),
                                                 ("fra", "Français", "mono", False)]:
            sound = out.add_stream("aac", rate=44100)
            sound.layout = layout
            sound.metadata.update(language=language, title=title)
            sound.disposition = DEFAULT if default else 0
            tracks.append(sound)
        text = out.add_mux_stream("subrip")
        text.time_base = Fraction(1, 1000)
        text.metadata["language"] = "ger"
        text.disposition = FORCED
        out.add_attachment("font.ttf", "font/ttf", FONT)
        out.metadata["title"] = "A film"
        out.set_chapters([{"id": i + 1, "start": start, "end": end,
                           "time_base": Fraction(1, 1000), "metadata": {"title": title}}
                          for i, (title, start, end) in enumerate(CHAPTERS)])
        out.start_encoding()
        media.encode_frames(out, video, frames)
        cue = av.Packet(SUBTITLE.encode())
        cue.stream, cue.time_base = text, Fraction(1, 1000)
        cue.pts = cue.dts = 0
        cue.duration = 100
        out.mux(cue)
        for sound in tracks:
            channels = len(sound.layout.channels)
            samples = np.zeros((channels, 44100 * len(frames) // fps), np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout=sound.layout.name)
            chunk.sample_rate, chunk.pts = 44100, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def contents(path: Path) -> dict:
    """What a file holds besides its frames, read with PyAV."""
    with av.open(str(path)) as container:
        streams = list(container.streams)
        audio = [(s.codec_context.name, s.metadata.get("language"),  # MP4 reads title as name
                  s.metadata.get("title", s.metadata.get("name")), bool(s.disposition & DEFAULT))
                 for s in container.streams.audio]
        subtitles = [(s.codec_context.name, s.metadata.get("language"),
                      bool(s.disposition & FORCED)) for s in container.streams.subtitles]
        attachments = [(s.name, s.mimetype, bytes(s.data)) for s in streams
                       if s.type == "attachment"]
        chapters = [(c["metadata"].get("title"), round(1000 * c["start"] * c["time_base"]))
                    for c in container.chapters()]
        video = container.streams.video[0].metadata.get("language")
        title = container.metadata.get("title")
        cues = []
        for stream in container.streams.subtitles:
            for packet in container.demux(stream):
                if packet.size:
                    cues.append(bytes(packet))
    return dict(audio=audio, subtitles=subtitles, attachments=attachments, chapters=chapters,
                video=video, title=title, cues=cues)


@pytest.fixture(scope="module")
def rich_mkv(tmp_path_factory, media) -> Path:
    frames = media.synthetic_frames(4, 80, 64)  # valid model input as it is
    return write_rich_mkv(tmp_path_factory.mktemp("rich") / "film.mkv", media, frames)


def test_the_rich_mkv_holds_what_the_tests_expect(rich_mkv):
    """The input itself (so that a muxer change cannot make the next tests vacuous)."""
    held = contents(rich_mkv)
    assert held["audio"] == [("aac", "eng", "English", True), ("aac", "fra", "Français", False)]
    assert held["subtitles"] == [("srt", "ger", True)]  # FFmpeg's SubRip decoder
    assert held["attachments"] == [("font.ttf", "font/ttf", FONT)]
    assert held["chapters"] == [("Intro", 0), ("End", 80)]
    assert held["title"] == "A film" and held["video"] == "jpn"
    assert held["cues"] == [SUBTITLE.encode()]
    assert open_source(rich_mkv).extras == ("2 audio streams", "1 subtitle stream",
                                            "1 attachment", "chapters", "metadata")


def test_hirn_run_keeps_every_stream_and_tag_of_an_mkv(rich_mkv, tiny_checkpoint, tmp_path,
                                                       one_thread):
    out = tmp_path / "film_x4.mkv"
    result = invoke(rich_mkv, "-o", out, "--checkpoint", tiny_checkpoint, *THREADS)
    assert result.exit_code == 0, result.output
    assert "not kept" not in result.output and "converted" not in result.output
    assert read_frames(out).shape == (4, 256, 320, 3)
    held, source = contents(out), contents(rich_mkv)
    assert held == source  # audio (remuxed), subtitles, font, chapters, title, languages
    with av.open(str(rich_mkv)) as a, av.open(str(out)) as b:  # audio copied, not re-encoded
        for one, other in zip(a.streams.audio, b.streams.audio):
            assert [bytes(p) for p in a.demux(one) if p.size] == \
                   [bytes(p) for p in b.demux(other) if p.size]
            a.seek(0)
            b.seek(0)


def test_hirn_run_to_mp4_names_what_mp4_cannot_hold(rich_mkv, tiny_checkpoint, tmp_path,
                                                   one_thread):
    out = tmp_path / "film_x4.mp4"
    result = invoke(rich_mkv, "-o", out, "--checkpoint", tiny_checkpoint, *THREADS)
    assert result.exit_code == 0, result.output
    assert "not kept in MP4: stream 4: attachment font.ttf (MP4 holds no attachments; " \
           "write .mkv to keep it)" in result.output
    assert "converted for the output container: srt subtitles to mov_text" in result.output
    held = contents(out)
    assert held["audio"] == [("aac", "eng", "English", True), ("aac", "fra", "Français", False)]
    assert held["subtitles"] == [("mov_text", "ger", True)]
    assert held["cues"] == [struct.pack(">H", len(SUBTITLE)) + SUBTITLE.encode()]  # tx3g
    assert held["chapters"] == [("Intro", 0), ("End", 80)]
    assert held["title"] == "A film" and held["video"] == "jpn"
    assert held["attachments"] == []


def test_a_png_folder_names_everything_it_drops(rich_mkv, tmp_path):
    source = open_source(rich_mkv)
    with open_sink(tmp_path / "frames", width=source.width, height=source.height,
                   fps=source.fps, time_base=source.time_base, audio_from=source) as sink:
        for image, pts in source:
            sink.write(image, pts)
    assert sink.notes == ["audio not written: a folder of PNGs holds no audio",
                          "not written: 1 subtitle stream, 1 attachment, chapters, metadata: "
                          "a folder of PNGs holds frames only"]


def copy(source_path: Path, output: Path) -> list[str]:
    """The frames of a file written to ``output`` as a sink does (no model); its notes."""
    source = open_source(source_path)
    with open_sink(output, width=source.width, height=source.height, fps=source.fps,
                   time_base=source.time_base, audio_from=source) as sink:
        for image, pts in source:
            sink.write(image, pts)
    return sink.notes


def test_timecode_and_cover_pictures_cross_containers(tmp_path, media):
    frames = media.synthetic_frames(3)
    mp4 = tmp_path / "tc.mp4"
    with av.open(str(mp4), "w") as out:  # an MP4 with a tmcd track and a cover picture
        video = out.add_stream("libx264", rate=media.fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.metadata["timecode"] = "01:02:03:04"
        ok, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 200, np.uint8))
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 16, 16, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        out.start_encoding()
        media.encode_frames(out, video, frames)
        picture = av.Packet(jpeg.tobytes())
        picture.stream = cover
        out.mux(picture)

    def held(path):
        with av.open(str(path)) as container:
            timecode = {k.lower(): v for k, v in container.streams.video[0].metadata.items()}
            covers = [s for s in container.streams.video
                      if s.disposition & av.stream.Disposition.attached_pic]
            pictures = [bytes(p) for p in container.demux(*covers) if p.size] if covers else []
            return timecode.get("timecode"), pictures

    assert held(mp4) == ("01:02:03:04", [jpeg.tobytes()])
    for first, second in [(".mkv", ".mp4"), (".mp4", ".mkv")]:
        a, b = tmp_path / f"{first[1:]}_a{first}", tmp_path / f"{first[1:]}_b{second}"
        assert copy(mp4, a) == [] and copy(a, b) == []
        # MP4: a tmcd track and a covr picture; MKV: a TIMECODE tag and an attachment
        assert held(a) == held(b) == ("01:02:03:04", [jpeg.tobytes()]), (first, second)
    mov = tmp_path / "a.mov"  # a tmcd track too, but FFmpeg's MOV muxer drops covers: said
    assert copy(mp4, mov) == ["not kept in MOV: stream 2: a cover picture (MOV drops it; "
                              "write .mp4 or .mkv to keep it)"]
    assert held(mov) == ("01:02:03:04", [])


# ---------------------------------------------------------------------------------------------
# Damage the decoder reports: a bit-flipped P-frame in an MP4


def flip_p_frame(path: Path, frame: int, damaged: Path) -> Path:
    """A copy of an H.264 MP4 with the second half of ``frame``'s slice data inverted (the
    packet found by demuxing: its position and size)."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        packet = packets[frame]
        assert not packet.is_keyframe  # a P-frame (the clip has no B-frames)
        position, data = packet.pos, bytes(packet)
    # MP4 stores NAL units behind 4-byte sizes; the P-frame is one slice NAL unit
    size = struct.unpack(">I", data[:4])[0]
    assert size == len(data) - 4 and data[4] & 0x1F == 1  # a non-IDR slice
    content = bytearray(path.read_bytes())
    for at in range(position + 4 + size // 2, position + 4 + size):
        content[at] ^= 0xFF
    damaged.write_bytes(bytes(content))
    return damaged


@pytest.fixture
def flipped_mp4(tmp_path, media) -> Path:
    clean = media.write_video(tmp_path / "clean.mp4", media.synthetic_frames(4, 80, 64),
                              options={"bf": "0"})
    return flip_p_frame(clean, 2, tmp_path / "flipped.mp4")


def test_a_bit_flipped_p_frame_is_named(flipped_mp4, tiny_checkpoint, tmp_path, one_thread):
    clean = read_frames(tmp_path / "clean.mp4")
    source = open_source(flipped_mp4)
    frames = np.stack([image for image, _ in source])
    assert source.damaged == [2]  # the flipped frame, from the decoder's own error report
    assert np.array_equal(frames[:2], clean[:2]) and not np.array_equal(frames[2], clean[2])
    assert open_source(tmp_path / "clean.mp4").damaged == []  # (after iterating)
    result = invoke(flipped_mp4, "-o", tmp_path / "out.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", *THREADS)
    assert result.exit_code == 0, result.output
    assert "1 of 4 frames were decoded with errors that FFmpeg concealed (frame 2, " \
           "counted from 0)" in result.output


def test_a_bit_flipped_p_frame_is_an_error_under_strict(flipped_mp4, tiny_checkpoint,
                                                         tmp_path, one_thread):
    before = names(tmp_path)
    result = invoke(flipped_mp4, "-o", tmp_path / "out.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", "--strict", *THREADS)
    assert_clean_failure(result, "flipped.mp4: the decoder found errors in frame 2 (counted "
                                 "from 0) and concealed them", tmp_path, before)


def test_a_packet_the_decoder_refuses_is_skipped_and_said(tmp_path, media):
    """A P-frame whose slice header is damaged gives no frame at all: the others still
    come, with a note, and the frame after the gap counts as damaged."""
    clean = media.write_video(tmp_path / "clean.mp4", media.synthetic_frames(6, 80, 64),
                              options={"bf": "0"})
    with av.open(str(clean)) as container:
        packet = [p for p in container.demux(video=0) if p.size][2]
        position = packet.pos
    content = bytearray(clean.read_bytes())
    content[position + 5: position + 9] = b"\xff\xff\xff\xff"  # the slice header
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(content))
    source = open_source(broken)
    count = sum(1 for _ in source)
    assert count == 5 and source.damaged == [2]
    assert "1 damaged packet could not be decoded: missing from the output" in \
           " ".join(source.notes)


def test_a_data_track_is_kept_where_the_container_takes_it_else_named(tmp_path, media):
    mp4 = tmp_path / "gopro.mp4"
    with av.open(str(mp4), "w") as out:  # a camera's telemetry track beside the video
        video = out.add_stream("libx264", rate=media.fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        data = out.add_data_stream("bin_data")
        out.start_encoding()
        for index, image in enumerate(media.synthetic_frames(3)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
            packet = av.Packet(b"telemetry %d" % index)
            packet.stream, packet.time_base = data, Fraction(1, media.fps)
            packet.pts = packet.dts = index
            packet.duration = 1  # (MP4 loses a last sample without a duration)
            out.mux(packet)
        out.mux(video.encode(None))

    def records(path):
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(*container.streams.data) if p.size]

    assert records(mp4) == [b"telemetry 0", b"telemetry 1", b"telemetry 2"]
    assert copy(mp4, tmp_path / "copy.mp4") == []
    assert records(tmp_path / "copy.mp4") == records(mp4)
    assert copy(mp4, tmp_path / "copy.mkv") == [
        "not kept in MKV: stream 1: its bin_data data track cannot go into MKV"]


def test_an_audio_track_without_packets_is_kept_in_mkv_and_named_where_mp4_drops_it(
        tmp_path, media):
    """A track declared but never written to: MP4's muxer writes no empty track."""
    silent = tmp_path / "silent.mkv"
    with av.open(str(silent), "w") as out:
        video = out.add_stream("libx264", rate=media.fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream("aac", rate=44100)
        sound.metadata["language"] = "eng"
        media.encode_frames(out, video, media.synthetic_frames(2))

    def kinds(path):
        with av.open(str(path)) as container:
            return [s.type for s in container.streams]

    assert kinds(silent) == ["video", "audio"]
    assert copy(silent, tmp_path / "copy.mkv") == []
    assert kinds(tmp_path / "copy.mkv") == ["video", "audio"]
    for suffix, shown in ((".mp4", "MP4"), (".mov", "MOV")):
        assert copy(silent, tmp_path / f"copy{suffix}") == [
            f"not kept in {shown}: stream 1 (eng): its audio track has no packets ({shown} "
            f"writes no empty track; .mkv keeps it)"]
        assert kinds(tmp_path / f"copy{suffix}") == ["video"]
