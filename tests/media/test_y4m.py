"""YUV4MPEG2 pipes: ``hirn-run - -o -`` as a subprocess gives the frames a file run gives, and
rate, size, aspect, bit depth, chroma siting and range pass from header to header; interlaced,
broken and impossible streams, and a reader that goes away, end with clear errors; a stream
cut inside a frame loses that frame with a note (an error under --strict)."""

from __future__ import annotations

import io
import shutil
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
from click.testing import CliRunner
from support import assert_clean_failure, names

from hirn.core.errors import SinkError, SourceError
from hirn.media import y4m
from hirn.media.video import open_sink, open_source
from hirn.media.y4m import FRAME_LINE, Header, Y4MSource, format_header, parse_header
from hirn.runtime.cli import main

THREADS = ("--threads", "1")  # one thread runs fastest on a loaded 2-core machine
WIDTH, HEIGHT, FRAMES = 80, 64, 3  # valid model input as they are (even, >= 64)
PIPE_TIMEOUT_S = 300
# a stream of FRAMES frames of 7680 bytes (80x64 4:2:0) whose last frame is 100 bytes short
CUT_LAST = (f"the Y4M stream on standard input ended inside frame {FRAMES - 1} (counted from "
            f"0; 7580 of 7680 bytes)")


def stream(header: str, fmt: str, frames: int = FRAMES, seed: int = 0) -> bytes:
    """A Y4M stream: ``header`` and ``frames`` frames of random samples in ``fmt``."""
    rng = np.random.default_rng(seed)
    probe = av.VideoFrame(WIDTH, HEIGHT, fmt)
    wide = max(c.bits for c in probe.format.components) > 8
    top = max(c.bits for c in probe.format.components)
    body = []
    for _ in range(frames):
        body.append(b"FRAME\n")
        for plane in probe.planes:
            low, high = (16, 235) if not wide else (64 << (top - 10), 940 << (top - 10))
            samples = rng.integers(low, high, (plane.height, plane.width))
            body.append(samples.astype("<u2" if wide else np.uint8).tobytes())
    return (header + "\n").encode() + b"".join(body)


def planes(frame) -> list[np.ndarray]:
    wide = max(c.bits for c in frame.format.components) > 8
    dtype = np.uint16 if wide else np.uint8
    return [np.frombuffer(p, dtype).reshape(p.height, -1)[:, :p.width].copy()
            for p in frame.planes]


def read_stream(data: bytes) -> tuple[bytes, list[list[np.ndarray]]]:
    """The header line of a Y4M stream and its frames' planes (read by PyAV)."""
    header = data.split(b"\n", 1)[0]
    with av.open(io.BytesIO(data), format="yuv4mpegpipe") as container:
        return header, [planes(frame) for frame in container.decode(video=0)]


# ---------------------------------------------------------------------------------------------
# Headers and reading


def test_headers_are_parsed_and_written_back():
    line = b"YUV4MPEG2 W720 H480 F30000:1001 Ip A10:11 C420mpeg2 XYSCSS=420MPEG2 XCOLORRANGE=FULL"
    header = parse_header(line)
    assert header == Header(720, 480, Fraction(30000, 1001), "p", Fraction(10, 11),
                            "420mpeg2", "FULL")
    assert header.siting == "mpeg2"
    assert format_header(header) == line + b"\n"
    plain = parse_header(b"YUV4MPEG2 W64 H48 F25:1")  # C and I default, A unknown
    assert (plain.chroma, plain.siting, plain.interlace, plain.aspect) == (
        "420jpeg", "jpeg", "p", None)
    assert parse_header(b"YUV4MPEG2 W64 H48 F25:1 C444p12 XFOO=1").extra == ("XFOO=1",)


@pytest.mark.parametrize("fmt, chroma", [("yuv420p", "420jpeg"), ("yuv422p", "422"),
                                         ("yuv444p", "444"), ("yuv420p10le", "420p10"),
                                         ("yuv444p16le", "444p16"), ("gray", "mono")])
def test_streams_are_read_as_ffmpeg_reads_them(tmp_path, fmt, chroma):
    data = stream(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 Ip A0:0 C{chroma}", fmt)
    source = Y4MSource(io.BytesIO(data))
    (tmp_path / "s.y4m").write_bytes(data)
    reference = open_source(tmp_path / "s.y4m")  # FFmpeg's reader, through a file
    assert source.sampling.pix_fmt == fmt == reference.sampling.pix_fmt
    assert (source.width, source.height, source.fps, source.frame_count) == (
        WIDTH, HEIGHT, 25, None)
    got, expected = list(source), list(reference)
    assert len(got) == FRAMES and [pts for _, pts in got] == list(range(FRAMES))
    for (image, _), (truth, _) in zip(got, expected):
        assert image.dtype == truth.dtype and np.array_equal(image, truth)
    with pytest.raises(RuntimeError, match="only once"):
        list(source)


@pytest.mark.parametrize("data, message", [
    (b"", "standard input is empty"),
    (b"RIFF....WAVEfmt \n", "is not a YUV4MPEG2 stream"),
    (b"YUV4MPEG2 W64 F25:1\n", "lacks or garbles its size or rate"),
    (b"YUV4MPEG2 W64 H48 F25:1 It C420jpeg\nFRAME\n", "interlaced (top field first)"),
    (b"YUV4MPEG2 W64 H48 F25:1 Im\n", "interlaced (mixed fields)"),
    (b"YUV4MPEG2 W64 H48 F25:1 Ip C420jpeg\n", "holds a header but no frames"),
    pytest.param(b"YUV4MPEG2 W64 H48 F25:1\nFRAME\n" + bytes(100),
                 "ended inside frame 0 (counted from 0; 100 of 4608 bytes): it holds no "
                 "whole frame",
                 id="cut-inside-the-first-frame")])
def test_bad_streams_are_refused(data, message):
    with pytest.raises(SourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Y4MSource(io.BytesIO(data))


def test_a_stream_cut_mid_frame_ends_with_its_frames():
    data = stream(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 C420jpeg", "yuv420p")
    cut = Y4MSource(io.BytesIO(data[:-100]))  # the last frame 100 bytes short
    assert len(list(cut)) == FRAMES - 1
    assert cut.notes == [f"{CUT_LAST}: that frame was dropped; the output holds the "
                         f"{FRAMES - 1} frames before it"]
    whole = Y4MSource(io.BytesIO(data))
    assert len(list(whole)) == FRAMES and whole.notes == []


def test_interlaced_input_is_a_clean_cli_error(tmp_path, tiny_checkpoint):
    result = CliRunner().invoke(main, ["-", "-o", str(tmp_path / "o.mkv"), "--checkpoint",
                                       str(tiny_checkpoint)],
                                input=b"YUV4MPEG2 W64 H48 F25:1 Ib\nFRAME\n")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: the Y4M stream on standard input is interlaced (bottom field first)" in \
        result.output
    assert names(tmp_path) == []


@pytest.mark.parametrize("fields, message", [
    ("F0:1", "the Y4M header's frame rate F0:1 is not a positive rate"),
    ("F-25:1", "the Y4M header's frame rate F-25:1 is not a positive rate"),
    ("F25:1 A0:1", "the Y4M header's pixel aspect A0:1 is not a positive ratio"),
    ("F25:1 A4:-3", "the Y4M header's pixel aspect A4:-3 is not a positive ratio")])
def test_rates_and_aspects_that_are_not_positive_are_refused(tmp_path, tiny_checkpoint, fields,
                                                            message):
    # one whole 64x48 frame follows: only the header is wrong
    data = f"YUV4MPEG2 W64 H48 {fields}\n".encode() + FRAME_LINE + bytes(64 * 48 * 3 // 2)
    result = _invoke_with(data, "-", "-o", tmp_path / "o.mkv", "--checkpoint", tiny_checkpoint)
    assert_clean_failure(result, message, tmp_path, [])


@pytest.mark.parametrize("size, message", [
    # FFmpeg's own refusal was its errno -16 ("Device or resource busy")
    ("W100000 H100000", "frame size W100000 H100000 is too large: a frame of that size needs "
                        "14.0 GiB"),
    ("W16256 H16256 C444p16", "frame size W16256 H16256 is too large: a frame of that size "
                              "needs 1.5 GiB"),
    ("W0 H48", "frame size W0 H48 is not a frame size")])
def test_impossible_sizes_are_refused_by_name(tmp_path, tiny_checkpoint, size, message):
    result = _invoke_with(f"YUV4MPEG2 {size} F25:1\nFRAME\n".encode(), "-", "-o",
                          tmp_path / "o.mkv", "--checkpoint", tiny_checkpoint)
    assert_clean_failure(result, message, tmp_path, [])
    assert "busy" not in result.output


def test_a_cut_stream_is_an_error_under_strict(tmp_path, tiny_checkpoint):
    data = stream(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 C420jpeg", "yuv420p")[:-100]
    result = _invoke_with(data, "-", "-o", tmp_path / "o.mkv", "--checkpoint", tiny_checkpoint,
                          "--strict", *THREADS)
    assert_clean_failure(result, f"{CUT_LAST}: the stream is cut short (drop --strict",
                         tmp_path, [])


def _invoke_with(data: bytes, *args):
    """hirn-run in this process, ``data`` on its standard input."""
    return CliRunner().invoke(main, [str(a) for a in args], input=data)


# ---------------------------------------------------------------------------------------------
# Writing: the header passes through


@pytest.mark.parametrize("header, fmt, written", [
    ("F30000:1001 Ip A4:3 C420mpeg2 XCOLORRANGE=FULL", "yuv420p",
     "F30000:1001 Ip A4:3 C420mpeg2 XYSCSS=420MPEG2 XCOLORRANGE=FULL"),
    ("F25:1 C420paldv", "yuv420p", "F25:1 Ip A0:0 C420paldv XYSCSS=420PALDV XCOLORRANGE=LIMITED"),
    ("F24000:1001 Ip A1:1 C422p10 XCOLORRANGE=LIMITED", "yuv422p10le",  # stated: kept
     "F24000:1001 Ip A1:1 C422p10 XYSCSS=422P10 XCOLORRANGE=LIMITED"),
    ("F50:1 C444p12 XCOLORRANGE=FULL", "yuv444p12le",
     "F50:1 Ip A0:0 C444p12 XYSCSS=444P12 XCOLORRANGE=FULL")])
def test_header_fields_pass_through(monkeypatch, header, fmt, written):
    data = stream(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} {header}", fmt, frames=2)
    source = Y4MSource(io.BytesIO(data))
    out = io.BytesIO()
    monkeypatch.setattr(y4m, "_frames_out", out)  # what -o - writes to
    with open_sink("-", width=2 * WIDTH, height=2 * HEIGHT, fps=source.fps,
                   time_base=source.time_base, colour=source.colour, sampling=source.sampling,
                   sample_aspect_ratio=source.sample_aspect_ratio, audio_from=source) as sink:
        for image, pts in source:
            sink.write(np.repeat(np.repeat(image, 2, 0), 2, 1), pts)
    assert sink.notes == []
    line, frames = read_stream(out.getvalue())
    assert line.decode() == f"YUV4MPEG2 W{2 * WIDTH} H{2 * HEIGHT} {written}"
    assert len(frames) == 2


def test_pipe_output_refuses_a_codec_and_unknown_formats():
    with pytest.raises(SinkError, match="--codec ffv1 does not apply"):
        open_sink("-", width=64, height=64, fps=25, codec="ffv1")
    with pytest.raises(SinkError, match="y4m cannot be written in pixel format 'bgr0'"):
        open_sink("-", width=64, height=64, fps=25, pix_fmt="bgr0")


# ---------------------------------------------------------------------------------------------
# hirn-run - -o -, in real processes


def _hirn_run(*args, data: bytes, **options) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("hirn-run"), *map(str, args)], input=data,
                          capture_output=True, timeout=PIPE_TIMEOUT_S, **options)


@pytest.fixture(scope="module")
def ten_bit_stream() -> bytes:
    return stream(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F30000:1001 Ip A1:1 C420p10 XYSCSS=420P10 "
                  f"XCOLORRANGE=FULL", "yuv420p10le")


def test_a_pipe_gives_the_frames_of_a_file_run(ten_bit_stream, tiny_checkpoint, tmp_path):
    piped = _hirn_run("-", "-o", "-", "--checkpoint", tiny_checkpoint, *THREADS,
                      data=ten_bit_stream)
    assert piped.returncode == 0, piped.stderr.decode()
    stderr = piped.stderr.decode()
    assert "3 frames in " in stderr and "Traceback" not in stderr  # the summary: on stderr
    line, frames = read_stream(piped.stdout)  # stdout holds the stream and nothing else
    # square pixels stated (A1:1) stay stated, not unknown (A0:0)
    assert line == (b"YUV4MPEG2 W320 H256 F30000:1001 Ip A1:1 C420p10 XYSCSS=420P10 "
                    b"XCOLORRANGE=FULL")
    assert len(frames) == FRAMES
    # the same input into a lossless file in the same format: the same samples
    out = tmp_path / "out.mkv"
    filed = _hirn_run("-", "-o", out, "--checkpoint", tiny_checkpoint, "--codec", "ffv1",
                      "--pix-fmt", "yuv420p10le", *THREADS, data=ten_bit_stream)
    assert filed.returncode == 0, filed.stderr.decode()
    with av.open(str(out)) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
        reference = [planes(frame) for frame in container.decode(video=0)]
    assert len(reference) == FRAMES
    for got, truth in zip(frames, reference):
        for plane, expected in zip(got, truth):
            assert np.array_equal(plane, expected)


def test_a_reader_that_goes_away_is_a_clear_error(ten_bit_stream, tiny_checkpoint):
    process = subprocess.Popen([shutil.which("hirn-run"), "-", "-o", "-", "--checkpoint",
                                str(tiny_checkpoint), *THREADS], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(ten_bit_stream)
    process.stdin.close()
    assert process.stdout.read(100).startswith(b"YUV4MPEG2 W320")
    process.stdout.close()  # the output is three frames of 240 KiB: more than a pipe holds
    code = process.wait(timeout=PIPE_TIMEOUT_S)
    stderr = process.stderr.read().decode()
    assert code == 1, stderr
    assert "stopped reading" in stderr and "broken pipe" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_a_pipe_cut_inside_a_frame_gives_the_frames_before_it(tiny_checkpoint):
    data = stream(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F25:1 C420jpeg", "yuv420p")
    piped = _hirn_run("-", "-o", "-", "--checkpoint", tiny_checkpoint, *THREADS,
                      data=data[:-100])  # the last frame 100 bytes short
    stderr = piped.stderr.decode()
    assert piped.returncode == 0, stderr
    assert (f"note: {CUT_LAST}: that frame was dropped; the output holds the {FRAMES - 1} "
            f"frames before it") in stderr
    line, frames = read_stream(piped.stdout)
    assert len(frames) == FRAMES - 1
    # whole frames and nothing more: 4:2:0 at 8 bits is 1.5 bytes a pixel
    size = len(FRAME_LINE) + 4 * WIDTH * 4 * HEIGHT * 3 // 2
    assert len(piped.stdout) == len(line) + 1 + (FRAMES - 1) * size
