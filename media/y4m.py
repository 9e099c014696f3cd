"""YUV4MPEG2 pipes: ``hirn-run - -o -`` reads Y4M on standard input and writes it on standard
output, so that ``ffmpeg -f yuv4mpegpipe - | hirn-run - -o - | ffmpeg -i - ...`` and
``vspipe -c y4m`` work.

A stream is one header line (``YUV4MPEG2 W H F<rate> I<interlace> A<aspect> C<chroma> X...``)
and frames, each ``FRAME`` and its planes. Frames are read with PyAV's ``yuv4mpegpipe``
demuxer (it reads a pipe); the header is read here first, as PyAV shows neither the chroma
siting (420jpeg / 420mpeg2 / 420paldv) nor the interlacing, and then handed to the demuxer
again. The writer is written here: PyAV's muxer cannot tag the siting and refuses formats
deeper than 8 bits without ``strict``. Rate, size (x4), aspect, bit depth, chroma, siting and
range (``XCOLORRANGE``) pass from the input's header to the output's.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import chain
from pathlib import Path

import numpy as np

from hirn.core.errors import DecodeError, SinkError, SourceError
from hirn.media.colour import FULL, LIMITED, Colour, guess_matrix
from hirn.media.pixels import Y4M_FORMATS, Sampling
from hirn.media.video_reader import Frame, VideoSource, error_reason
from hirn.media.video_writer import FrameSink, rgb_format

PIPE = "-"  # INPUT or OUTPUT naming standard input / output
MAGIC = b"YUV4MPEG2"
MAX_HEADER = 4096  # bytes: a header longer than this is not a Y4M header
# pixel format -> C tag (4:2:0 at 8 bits takes its siting: 420jpeg, 420mpeg2, 420paldv)
FORMATS = Y4M_FORMATS  # pixel format -> C tag
SITINGS = ("jpeg", "mpeg2", "paldv")  # 4:2:0 chroma between, left of, top-left of the lumas
# C tag -> pixel format (FFmpeg's reading of it), for the size of a frame
PIX_FMTS = {**{tag: fmt for fmt, tag in FORMATS.items()},
            **{f"420{siting}": "yuv420p" for siting in SITINGS}, "444alpha": "yuva444p"}
FRAME_LINE = b"FRAME\n"  # before each frame's planes
# FFmpeg's Y4M reader takes frames while 8 x (W + 128) x (H + 128) stays under 2^31
# (av_image_check_size). Beyond, it adds the 6 bytes of a FRAME line to the error code
# AVERROR(EINVAL) = -22 as if it were a frame size, and fails with -16: EBUSY, "Device or
# resource busy". Refused here first, naming the size.
_FFMPEG_MAX_PADDED_PIXELS = (2**31 - 1) // 8
_INT32 = 2**31 - 1  # FFmpeg reads each number of F and A as a C int
_RATIO = re.compile(r"(\d+):(\d+)")
# ratio tags: what they are, and examples of good ones
_RATIOS = {"F": ("frame rate", "a positive rate", "F25:1, F30000:1001"),
           "A": ("pixel aspect", "a positive ratio", "A1:1, A10:11, or A0:0 for unknown")}
UNKNOWN_ASPECT = "0:0"
_INTERLACED = {"t": "top field first", "b": "bottom field first", "m": "mixed fields"}


@dataclass(frozen=True)
class Header:
    """The fields of a Y4M stream header."""

    width: int
    height: int
    rate: Fraction
    interlace: str = "p"                 # p, t, b, m, or ? (unknown)
    aspect: Fraction | None = None       # pixel aspect ratio; None: unknown (A0:0)
    chroma: str = "420jpeg"              # the C tag
    colour_range: str | None = None      # XCOLORRANGE: FULL or LIMITED; None: absent
    extra: tuple[str, ...] = field(default=())  # other X tags, as they came

    @property
    def siting(self) -> str | None:
        """4:2:0 chroma siting at 8 bits (jpeg, mpeg2, paldv); None for other formats."""
        if self.chroma in ("420", "420jpeg"):
            return "jpeg"
        return self.chroma[3:] if self.chroma in ("420mpeg2", "420paldv") else None

    @property
    def pix_fmt(self) -> str | None:
        """The pixel format FFmpeg reads the C tag as; None for a tag it does not read."""
        return PIX_FMTS.get(self.chroma)


def parse_header(line: bytes) -> Header:
    """A :class:`Header` from the first line of a stream (without its newline)."""
    words = line.decode("ascii", "replace").split(" ")
    if words[0] != MAGIC.decode():
        raise SourceError(f"standard input is not a YUV4MPEG2 stream (it starts with "
                          f"{line[:16]!r}): pipe Y4M into hirn-run -, e.g. ffmpeg -i VIDEO -f "
                          f"yuv4mpegpipe -")
    tags: dict[str, str] = {}
    extra = []
    for word in filter(None, words[1:]):
        if word.startswith("X"):
            if word.startswith("XCOLORRANGE="):
                tags["range"] = word.split("=", 1)[1]
            elif not word.startswith("XYSCSS="):  # restated from C when written
                extra.append(word)
        else:
            tags[word[0]] = word[1:]
    try:
        width, height, rate = int(tags["W"]), int(tags["H"]), tags["F"]
    except (KeyError, ValueError) as error:
        raise SourceError(f"the YUV4MPEG2 header on standard input lacks or garbles its size "
                          f"or rate ({line.decode('ascii', 'replace')!r}): W, H and F are "
                          f"required") from error
    aspect = tags.get("A", UNKNOWN_ASPECT)
    header = Header(width, height, _ratio("F", rate), tags.get("I", "p"),
                    None if aspect == UNKNOWN_ASPECT else _ratio("A", aspect),
                    tags.get("C", "420jpeg"), tags.get("range"), tuple(extra))
    _check_size(header)
    return header


def _ratio(tag: str, text: str) -> Fraction:
    """The ratio ``N:D`` of header field ``tag``, both numbers positive C ints."""
    match = _RATIO.fullmatch(text)
    if not match or not all(0 < int(n) <= _INT32 for n in match.groups()):
        what, kind, examples = _RATIOS[tag]
        raise SourceError(f"the Y4M header's {what} {tag}{text} is not {kind}: "
                          f"{tag} takes N:D, two whole numbers from 1 to {_INT32} (e.g. "
                          f"{examples}); fix the program that writes the stream")
    return Fraction(*map(int, match.groups()))


def _check_size(header: Header) -> None:
    """Refuse a frame size FFmpeg's reader cannot take, naming it."""
    size = f"W{header.width} H{header.height}"
    if header.width < 1 or header.height < 1:
        raise SourceError(f"the Y4M header's frame size {size} is not a frame size: width and "
                          f"height must be positive; fix the program that writes the stream")
    if (header.width + 128) * (header.height + 128) > _FFMPEG_MAX_PADDED_PIXELS:
        raise SourceError(f"the Y4M header's frame size {size} is too large: a frame of that "
                          f"size {_weight(header)}, and FFmpeg reads Y4M frames of at most "
                          f"about 16000x16000 pixels; scale the video down before piping it, "
                          f"or fix the program that writes the header")


def _weight(header: Header) -> str:
    """What one frame of ``header`` holds: its bytes where its format is known."""
    if header.pix_fmt is None:
        return f"holds {header.width * header.height / 1e6:.0f} million pixels"
    return f"needs {frame_bytes(header.pix_fmt, header.width, header.height) / 2**30:.1f} GiB"


def frame_bytes(pix_fmt: str, width: int, height: int) -> int:
    """Bytes of one frame's planes in a stream (its ``FRAME`` line not counted)."""
    import av

    fmt = av.VideoFormat(pix_fmt, width, height)
    return sum(c.width * c.height * ((c.bits + 7) // 8) for c in fmt.components)


def format_header(header: Header) -> bytes:
    """The header line of a stream, newline included."""
    aspect = (f"{header.aspect.numerator}:{header.aspect.denominator}" if header.aspect
              else UNKNOWN_ASPECT)
    words = [MAGIC.decode(), f"W{header.width}", f"H{header.height}",
             f"F{header.rate.numerator}:{header.rate.denominator}", f"I{header.interlace}",
             f"A{aspect}", f"C{header.chroma}"]
    if not header.chroma.startswith("mono"):
        words.append(f"XYSCSS={header.chroma.upper()}")  # what mjpegtools read
    if header.colour_range:
        words.append(f"XCOLORRANGE={header.colour_range}")
    return (" ".join([*words, *header.extra]) + "\n").encode("ascii")


def chroma_tag(pix_fmt: str, siting: str | None) -> str:
    """The C tag of ``pix_fmt`` (with its siting for 4:2:0 at 8 bits)."""
    tag = FORMATS[pix_fmt]
    return tag + (siting or "jpeg") if tag == "420" else tag


# ---------------------------------------------------------------------------------------------
# Reading


class _Replay:
    """A binary stream that gives ``head`` first, then the rest of ``stream`` (no seeking:
    PyAV then reads it as the pipe it is); ``given`` counts the bytes it gave."""

    def __init__(self, head: bytes, stream):
        self._head, self._stream = head, stream
        self.given = 0

    def read(self, size: int = -1) -> bytes:
        if self._head:
            size = len(self._head) if size < 0 else size
            data, self._head = self._head[:size], self._head[size:]
        else:
            data = self._stream.read(size)
        self.given += len(data)
        return data


def _read_header(stream) -> bytes:
    line = bytearray()
    while len(line) < MAX_HEADER:
        byte = stream.read(1)
        if not byte:
            if not line:
                raise SourceError("standard input is empty: pipe a YUV4MPEG2 stream into "
                                  "hirn-run -, e.g. ffmpeg -i VIDEO -f yuv4mpegpipe -")
            break
        if byte == b"\n":
            return bytes(line)
        line += byte
    parse_header(bytes(line))  # says what came instead
    raise SourceError("the YUV4MPEG2 header on standard input does not end (no newline in "
                      f"{MAX_HEADER} bytes): the stream is damaged")


class Y4MSource(VideoSource):
    """Frames of a YUV4MPEG2 stream (standard input), read once, as they come.

    The rate, aspect and range come from the header (the aspect as it says: 1 for A1:1, None
    for A0:0), the matrix is the usual guess by size (Y4M has no tag for it), and pts count
    frames (time_base = 1 / rate). Interlaced streams are refused: the model takes whole
    frames. A stream that ends inside a frame loses that frame, with a note, or with a
    :class:`DecodeError` if ``strict``.
    """

    def __init__(self, stream=None, *, strict: bool = False):
        import av

        super(VideoSource, self).__init__(Path(PIPE))  # no file to probe: FrameSource's
        stream = sys.stdin.buffer if stream is None else stream
        if getattr(stream, "isatty", lambda: False)():
            raise SourceError("INPUT - reads a YUV4MPEG2 stream on standard input, which is a "
                              "terminal here: pipe one in, e.g. ffmpeg -i VIDEO -f "
                              "yuv4mpegpipe - | hirn-run - -o OUTPUT")
        line = _read_header(stream)
        self.header = header = parse_header(line)
        if header.interlace in _INTERLACED:
            raise SourceError(f"the Y4M stream on standard input is interlaced "
                              f"({_INTERLACED[header.interlace]}): the model takes whole "
                              f"frames; deinterlace it first (e.g. ffmpeg -vf bwdif) or "
                              f"send progressive frames")
        self._input = _Replay(line + b"\n", stream)
        self._header_size = len(line) + 1
        self._strict = strict
        try:
            self._container = av.open(self._input, format="yuv4mpegpipe")
            video = self._container.streams.video[0]
            # as FFmpeg reads them: its format is the C tag's (or XYSCSS's where C is absent)
            self._frame_size = frame_bytes(video.codec_context.format.name, header.width,
                                           header.height)
            self._frames = self._container.decode(video)
            first = next(self._frames, None)
        except (av.FFmpegError, OSError) as error:
            raise SourceError(f"the Y4M stream on standard input cannot be read "
                              f"({error_reason(error)}): its header says "
                              f"{line.decode()!r}") from error
        if first is None:
            cut = self._cut(0)
            raise SourceError(f"the Y4M stream on standard input {cut}: it holds no whole "
                              f"frame, the stream is cut short" if cut else
                              "the Y4M stream on standard input holds a header but no frames")
        self._first = first
        self._coded = self.width, self.height = header.width, header.height
        self._turns = 0
        self._note_format(first.format)
        self.sampling = Sampling(self.sampling.bits, first.format.name, header.siting)
        self._yuv = not first.format.name.startswith("gray")
        matrix = guess_matrix(header.width, header.height)
        self.colour = Colour(matrix=matrix, range=FULL if header.colour_range == "FULL"
                             else LIMITED) if self._yuv else Colour()
        self.fps = header.rate
        self.time_base = 1 / header.rate
        self.sample_aspect_ratio = header.aspect  # as the header says: A1:1 passes through
        self.frame_count = None
        self.has_audio = False

    def __iter__(self):
        import av

        if self._first is None:
            raise RuntimeError("a Y4M stream on standard input can be read only once")
        frames, self._first = chain([self._first], self._frames), None
        read = 0
        try:
            while True:
                try:
                    frame = next(frames, None)
                except (av.FFmpegError, OSError) as error:
                    raise DecodeError(f"the Y4M stream on standard input broke off after "
                                      f"{read} frames ({error_reason(error)})",
                                      frames_read=read) from error
                if frame is None:
                    break
                yield Frame(self._to_rgb(frame), read)
                read += 1
        finally:
            self._container.close()
        self._end(read)

    def _end(self, read: int) -> None:
        """At the end of the stream, after ``read`` whole frames: a frame cut short is
        named in a note, or is an error if strict."""
        cut = self._cut(read)
        if cut and self._strict:
            raise DecodeError(f"the Y4M stream on standard input {cut}: the stream is cut "
                              f"short (drop --strict to upscale the {read} frames before it, "
                              f"with a note)", frames_read=read)
        if cut:
            self._note(f"the Y4M stream on standard input {cut}: that frame was dropped; the "
                       f"output holds the {read} frames before it")

    def _cut(self, read: int) -> str | None:
        """``ended inside frame N (X of Y bytes)`` where the stream, after ``read`` whole
        frames, has bytes left that make no whole frame (FFmpeg drops them without a word);
        None where it ended after a frame."""
        # FFmpeg has read to the end; each frame is FRAME_LINE and its planes (a FRAME line
        # may carry parameters, but FFmpeg's own frame count assumes none either)
        frames = self._input.given - self._header_size
        left = frames - read * (len(FRAME_LINE) + self._frame_size)
        if left <= 0:
            return None
        return (f"ended inside frame {read} (counted from 0; "
                f"{max(0, left - len(FRAME_LINE))} of {self._frame_size} bytes)")


# ---------------------------------------------------------------------------------------------
# Writing


class Y4MSink(FrameSink):
    """Writes frames as a YUV4MPEG2 stream to ``stream`` (standard output) as they come.

    Nothing is atomic about a pipe: frames leave as they are written, and a failure ends
    the stream where it is (the reader sees it cut short, and hirn-run exits non-zero).
    """

    def __init__(self, stream, *, colour: Colour | None = None, siting: str | None = None,
                 sample_aspect_ratio: Fraction | None = None, **common):
        super().__init__(Path(PIPE), None, codec="y4m", overwrite=True, **common)
        self._stream = stream
        self.colour = colour or Colour()
        fps = Fraction(self.fps)
        yuv = not self.pix_fmt.startswith("gray")
        self._header = format_header(Header(
            self.width, self.height, fps, "p", sample_aspect_ratio,
            chroma_tag(self.pix_fmt, siting),
            ("FULL" if self.colour.range == FULL else "LIMITED") if yuv else None))
        self._bytes = 2 if self.dtype == np.uint16 else 1

    def _write(self, image: np.ndarray, pts: int) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image, format=rgb_format(image)).reformat(
            format=self.pix_fmt, dst_colorspace=self.colour.swscale_matrix,
            dst_color_range=self.colour.range)
        parts = [self._header] if self.frames_written == 0 else []
        parts.append(b"FRAME\n")
        for plane in frame.planes:  # without the padding at the end of each line
            rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            parts.append(rows[:, :plane.width * self._bytes].tobytes())
        self._send(b"".join(parts))

    def _send(self, data: bytes) -> None:
        try:
            self._stream.write(data)
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            _silence(self._stream)
            raise SinkError(f"the program reading hirn-run's output (-o -) stopped reading "
                            f"after {self.frames_written} frames (broken pipe): the stream "
                            f"is cut short; check that program") from error

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise SinkError("no frames were written to standard output: nothing to send")
        try:
            self._stream.flush()
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            _silence(self._stream)
            raise SinkError("the program reading hirn-run's output (-o -) stopped reading "
                            "before the end (broken pipe)") from error

    def _publish(self) -> None:
        """A pipe has nothing to move into place."""


def _silence(stream) -> None:
    """Point a stream whose reader is gone at /dev/null, so that the flush at exit does
    not fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


_frames_out = None  # the stream frames go to while hirn-run writes to standard output


@contextmanager
def frames_to_stdout():
    """While it lasts, frames written to ``-`` go to the real standard output, and anything
    else printed there (by this program or a library) goes to standard error instead, so
    that it cannot corrupt the stream."""
    global _frames_out
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    _frames_out = os.fdopen(os.dup(saved), "wb")
    try:
        yield _frames_out
    finally:
        try:
            _frames_out.close()
        except OSError:
            pass
        _frames_out = None
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def stdout_stream():
    """Where frames written to ``-`` go: the stream of :func:`frames_to_stdout`, else
    ``sys.stdout.buffer``."""
    return _frames_out if _frames_out is not None else sys.stdout.buffer


def is_pipe(path) -> bool:
    """Whether an INPUT or OUTPUT names standard input / output."""
    return str(path) == PIPE
