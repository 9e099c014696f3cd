"""Frame sources: a video file (PyAV) or a folder of images (OpenCV), decoded one frame at a time.

Every frame comes out as ``[H, W, 3]`` RGB with its presentation timestamp: uint8 for 8-bit
sources, uint16 (full 16-bit scale) for deeper ones, so nothing is truncated
(``source.sampling`` says which); conversions needed to get there (gray, alpha) are done once
per frame and said once in ``notes``. A video's YUV is converted with its own matrix and
range (``colour``, for the sink to convert back with). Nothing is read ahead: iterating holds
one decoded frame (plus the decoder's own reorder buffer), whatever the length of the input.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np

from hirn.core.errors import DecodeError, SourceError, is_out_of_memory
from hirn.core.files import natural_key
from hirn.core.words import name_frames
from hirn.media.colour import Colour, read_colour
from hirn.media.damage import DamageWatch
from hirn.media.pixels import Sampling, to_depth
from hirn.media.streams import describe_extras

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".pnm")
JPEG_SUFFIXES = (".jpg", ".jpeg")
DEFAULT_IMAGE_FPS = Fraction(25)
FPS_DENOMINATOR = 1001  # an image folder's rate is kept to 1/1001: 30000/1001 stays exact
# A video that ends this far short of the time its container announces gets a note that it may
# be cut short (matroska, for one, just stops at a cut); the slack absorbs rounding.
SHORTFALL_SLACK = (2, 0.05)  # frames, share of the announced length


class Frame(NamedTuple):
    """One decoded frame."""

    image: np.ndarray  # [H, W, 3] RGB: uint8, or uint16 for sources of more than 8 bits
    pts: int  # presentation timestamp, in units of the source's time_base


class FrameSource:
    """Frames of a video or an image folder, decoded lazily, one at a time.

    Iterating yields :class:`Frame` (``image, pts``) from the first frame; each iteration
    starts again from the beginning. pts strictly increase.

    Attributes:
        path: the input.
        width, height: frame size in pixels.
        frame_count: the number of frames, or the header's estimate of it (for progress
            only: a variable-rate video's differs); None if unknown.
        frame_count_exact: whether ``frame_count`` was counted (by the muxer, or the files of a
            folder) rather than estimated.
        fps: frame rate (the average rate for a variable-rate video).
        time_base: the unit of pts, in seconds.
        has_audio: whether the input has audio streams (pass it as a sink's ``audio_from``).
        extras: what the input holds besides its frames (other streams, chapters, metadata),
            e.g. ``("2 audio streams", "chapters")``: a sink given the source copies them.
        sample_aspect_ratio: pixel aspect ratio when not square (anamorphic video), else None.
        colour: the video's matrix, range, primaries and transfer (pass it to the sink);
            None for image folders.
        sampling: bits per sample and pixel format of the source (frames are uint16 above 8
            bits); the output keeps its bits by default.
        notes: conversions done to reach RGB, each said once.
        damaged: frames (counted from 0) the decoder marked corrupt so far, its damage
            concealed; filled while iterating.
    """

    path: Path
    width: int
    height: int
    frame_count: int | None
    frame_count_exact: bool = True
    fps: Fraction
    time_base: Fraction
    has_audio: bool = False
    extras: tuple[str, ...] = ()
    sample_aspect_ratio: Fraction | None = None
    colour: Colour | None = None
    sampling: Sampling = Sampling()

    def __init__(self, path: Path):
        self.path = path
        self.notes: list[str] = []
        self.damaged: list[int] = []

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.width}x{self.height}, "
                f"frames={self.frame_count}, fps={self.fps}, audio={self.has_audio})")


# ---------------------------------------------------------------------------------------------
# Video files


class VideoSource(FrameSource):
    """A video file in any container and codec FFmpeg decodes (first video stream)."""

    def __init__(self, path: Path):
        super().__init__(path)
        import av

        container = _open_container(path)
        try:
            self._probe(container, av)
        finally:
            container.close()

    def _probe(self, container, av) -> None:
        path = self.path
        name = container.format.name
        if name in ("image2", "image2pipe") or name.endswith("_pipe"):
            raise SourceError(f"{path} is a single image, not a video: to upscale images, put "
                              f"them in a folder and pass the folder")
        if name == "tty":
            raise SourceError(f"{path} is not a video (FFmpeg reads it as text): pass a video "
                              f"file or a folder of images")
        streams = [s for s in container.streams.video
                   if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            kinds = sorted({s.type for s in container.streams})
            if not kinds:
                raise SourceError(f"{path} holds no streams: the video is empty")
            raise SourceError(f"{path} has no video stream (it holds {', '.join(kinds)}): "
                              f"pass a file with video")
        stream = streams[0]
        self._stream_index = stream.index
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError) as error:
            _refuse(error, DecodeError(
                f"{path}: its first frame cannot be decoded ({error_reason(error)}); the file "
                f"is damaged or uses a codec this FFmpeg lacks", frames_read=0))
        if first is None:
            raise SourceError(f"{path} holds a video stream but no frames: it is empty")
        self._coded = first.width, first.height
        self._turns = self._note_rotation(first.rotation)
        self.width, self.height = self._coded[::-1] if self._turns % 2 else self._coded
        self._note_format(first.format)
        self._note_stored_alpha(stream, first.format)
        self._read_colour(first, stream)
        if first.interlaced_frame:
            self._note("the video is interlaced: its frames are taken as stored, not "
                       "deinterlaced")
        self.has_audio = len(container.streams.audio) > 0
        self.extras = describe_extras(container, stream.index)
        sar = stream.sample_aspect_ratio
        self.sample_aspect_ratio = Fraction(sar) if sar and sar != 1 else None

        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            rate = DEFAULT_IMAGE_FPS
            self._note(f"the video declares no frame rate; {rate} frames/s assumed")
        self.fps = Fraction(rate)
        self.time_base = Fraction(stream.time_base) if stream.time_base else 1 / self.fps
        self._counted = max(0, int(stream.frames))  # by the muxer (mp4, mov, avi); 0: none
        self._seconds = self._declared_seconds(stream)
        self.frame_count_exact = self._counted > 0
        self.frame_count = self._counted or (None if self._seconds is None
                                             else round(self._seconds * self.fps))

    def _declared_seconds(self, stream) -> Fraction | None:
        """How long the container says the video lasts; None where it does not say."""
        if stream.duration:
            return stream.duration * self.time_base
        # matroska keeps no frame count; FFmpeg's muxer tags each track with its duration
        seconds = _parse_duration(stream.metadata.get("DURATION", ""))
        if seconds is None:
            return None
        start = stream.start_time * self.time_base if stream.start_time else 0
        return seconds - start

    def _note_format(self, fmt) -> None:
        comps = fmt.components
        if len([c for c in comps if not c.is_alpha]) == 1 and not fmt.has_palette:
            self._note(f"gray video ({fmt.name}) converted to RGB")
        if any(c.is_alpha for c in comps):
            self._note(f"alpha channel of {fmt.name} dropped")
        # above 8 bits, frames are decoded to 16-bit RGB: no sample is truncated
        self.sampling = Sampling(bits=max(c.bits for c in comps), pix_fmt=fmt.name)

    def _note_stored_alpha(self, stream, fmt) -> None:
        # WebM and Matroska keep VP8/VP9 alpha beside the colour (a BlockAdditional, tagged
        # alpha_mode 1), which FFmpeg's own decoders skip: frames come without it
        tags = {key.lower(): value for key, value in stream.metadata.items()}
        if tags.get("alpha_mode") == "1" and not any(c.is_alpha for c in fmt.components):
            self._note(f"alpha channel of {stream.codec_context.name} dropped (stored beside "
                       f"its colour: alpha_mode 1)")

    def _read_colour(self, first, stream) -> None:
        fmt = first.format
        # RGB and gray frames have no matrix to undo (and swscale reads their own tags as
        # before); a YUV one is converted with its tags, or the usual guess where it has none
        self._yuv = not fmt.is_rgb and len([c for c in fmt.components if not c.is_alpha]) > 1
        self.colour = read_colour(first, stream.codec_context, *self._coded)
        if not self._yuv:
            self.colour = Colour(primaries=self.colour.primaries, transfer=self.colour.transfer)
        elif not self.colour.converts_exactly:
            self._note(f"colour matrix {self.colour.matrix} has no converter here: BT.709 is "
                       f"used to reach RGB and back, and the output keeps the original tag")
        if self.colour.hdr:
            self._note(f"HDR video ({self.colour.hdr}): processed in its coded values, no tone "
                       f"mapping; the output keeps its colour tags")

    def __iter__(self) -> Iterator[Frame]:
        import av

        container = _open_container(self.path)
        read = 0
        watch = None
        try:
            stream = container.streams.video[self._stream_index]
            # slice threads only: with frame threads, a packet's errors are logged while later
            # packets decode, and the damaged frame could not be named (media/damage.py)
            stream.thread_type = "SLICE"
            watch = DamageWatch(stream)
            frames = watch.frames(container)
            step = max(1, round(1 / (self.fps * self.time_base)))
            first = last = None
            damaged = self.damaged = []  # read by the pipeline as it goes (for --strict)
            while True:
                try:
                    frame = next(frames, None)
                except (av.FFmpegError, OSError) as error:
                    _refuse(error, DecodeError(
                        f"{self.path}: decoding failed after {read} frames "
                        f"({error_reason(error)}); the file is damaged or truncated",
                        frames_read=read))
                if frame is None:
                    break
                pts = frame.pts
                if pts is None or (last is not None and pts <= last):
                    # missing or repeated stamps: keep a strictly increasing timeline
                    pts = 0 if last is None else last + step
                    if frame.pts is not None or read > 0:
                        self._note("some frame timestamps were missing or out of order; "
                                   "they were replaced by evenly spaced ones")
                first = pts if first is None else first
                last = pts
                if watch.damaged(frame):
                    damaged.append(read)
                yield Frame(self._to_rgb(frame), int(pts))
                read += 1
        finally:
            if watch is not None:
                watch.close()
            container.close()
        if read:
            self._note_length(read, (last - first + step) * self.time_base)
        if watch.lost:
            self._note(f"{watch.lost} damaged packet{'s' if watch.lost > 1 else ''} could not "
                       f"be decoded: missing from the output, and the frame after each counts "
                       f"as damaged")
        if damaged:
            self._note(f"{len(damaged)} of {read} frames were decoded with errors that FFmpeg "
                       f"concealed ({name_frames(damaged)}, counted from 0): the input is "
                       f"damaged or cut short, and so are those frames of the output")

    def _note_rotation(self, degrees: int) -> int:
        """Quarter turns (counterclockwise) that show the frames upright, as the video's
        display matrix asks (phone videos are often stored sideways)."""
        if degrees % 90:
            self._note(f"a display rotation of {degrees} degrees was ignored (not a multiple "
                       f"of 90)")
            return 0
        turns = round(degrees / 90) % 4
        if turns:
            way = {1: "90 degrees counterclockwise", 2: "180 degrees",
                   3: "90 degrees clockwise"}[turns]
            self._note(f"frames turned {way}, as the video's display rotation asks")
        return turns

    def _to_rgb(self, frame) -> np.ndarray:
        width, height = self._coded
        rgb = "rgb48le" if self.sampling.bits > 8 else "rgb24"
        size = {}
        if (frame.width, frame.height) != (width, height):
            self._note(f"frames that change size mid-stream were scaled to {width}x{height}")
            size = dict(width=width, height=height)
        if self._yuv:
            # the matrix and range read once from the first frame: the sink converts back with
            # the same, and untagged HD video is not taken for BT.601 (swscale's default)
            image = frame.to_ndarray(format=rgb, src_colorspace=self.colour.swscale_matrix,
                                     src_color_range=self.colour.range, **size)
        else:
            image = frame.to_ndarray(format=rgb, **size)
        return np.ascontiguousarray(np.rot90(image, self._turns)) if self._turns else image

    def _note_length(self, read: int, seconds: Fraction) -> None:
        """A note where the frames decoded (``read``, lasting ``seconds``) fall short of what
        the container announced. Never an error: the frames decoded are all written, and an
        estimate from the duration says nothing of a variable-rate video's frame count."""
        held = f"the output holds the {read} frames decoded"
        frames, share = SHORTFALL_SLACK
        declared = self._seconds
        if self._counted:
            if read != self._counted:
                self._note(f"{self.path}: its container counts {self._counted} frames but "
                           f"{read} were decoded: it may be cut short or damaged; {held}")
        elif declared and seconds < declared - max(frames / self.fps, share * declared):
            self._note(f"{self.path} ends at {float(seconds):.2f} s but its container says it "
                       f"lasts {float(declared):.2f} s: it may have been cut short (an "
                       f"interrupted download or copy?); {held}")


def _open_container(path: Path):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except EOFError as error:
        raise SourceError(f"{path} ends before its first frame: the video is empty (or cut "
                          f"short)") from error
    except (av.FFmpegError, OSError) as error:
        _refuse(error, SourceError(
            f"{path} is not a video FFmpeg can read ({error_reason(error)}): pass a video "
            f"file or a folder of images (a video cut short, e.g. an MP4 missing its end, "
            f"cannot be read either)"))


def _parse_duration(text: str) -> Fraction | None:
    """Seconds from a matroska ``HH:MM:SS.nnnnnnnnn`` tag; None when absent or malformed."""
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d)(?:\.(\d+))?", text.strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    total = Fraction(int(hours) * 3600 + int(minutes) * 60 + int(seconds))
    if fraction:
        total += Fraction(int(fraction), 10 ** len(fraction))
    return total


def _refuse(error: BaseException, refusal: SourceError) -> NoReturn:
    """Raise ``refusal`` for an FFmpeg or system ``error`` of the file, unless memory ran
    out: that says nothing of the file and is raised unchanged."""
    if is_out_of_memory(error):
        raise error
    raise refusal from error


def error_reason(error: BaseException) -> str:
    """An OS or FFmpeg error in a few words (its strerror where it has one)."""
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


# ---------------------------------------------------------------------------------------------
# Image folders


class ImageFolderSource(FrameSource):
    """A folder of images (png, jpg, bmp, tif, ...), one frame each, in natural name order.

    Hidden files and files of other types are ignored. Images carry no timing: pts count
    frames (time_base = 1 / fps). JPEGs are turned upright as their EXIF orientation asks.
    A folder whose first image has 16-bit (or floating-point) samples gives uint16 frames.
    """

    def __init__(self, path: Path, fps: Fraction | float | None = None):
        super().__init__(path)
        self.files = sorted((p for p in path.iterdir() if not p.name.startswith(".")
                             and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise SourceError(f"{path} holds no images (looked for "
                              f"{', '.join(IMAGE_SUFFIXES)}): pass a folder of frames")
        self._dtype = None  # of the frames: the first image's depth
        first = self._read(self.files[0], 0)
        self.height, self.width = first.shape[:2]
        self._check_png_sizes()
        self.frame_count = len(self.files)
        self.fps = Fraction(fps if fps is not None else DEFAULT_IMAGE_FPS).limit_denominator(
            FPS_DENOMINATOR)
        self.time_base = 1 / self.fps

    def __iter__(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            image = self._read(file, index)
            if image.shape[:2] != (self.height, self.width):
                self._size_error(file, image.shape[1], image.shape[0])
            yield Frame(image, index)

    def _size_error(self, file: Path, width: int, height: int):
        raise SourceError(
            f"{file} is {width}x{height} but {self.files[0].name} is {self.width}x{self.height}: "
            f"all images of a folder must have the same size (resize them or split the folder)")

    def _check_png_sizes(self) -> None:
        # PNG headers give the size in their first 24 bytes: a mixed folder is refused before
        # any work is done (other formats are checked as they are read)
        for file in self.files:
            if file.suffix.lower() == ".png":
                size = _png_size(file)
                if size is not None and size != (self.width, self.height):
                    self._size_error(file, *size)

    def _read(self, file: Path, index: int) -> np.ndarray:
        import cv2

        try:
            data = np.fromfile(file, dtype=np.uint8)
        except OSError as error:
            raise DecodeError(f"{file} cannot be read ({error_reason(error)})",
                              frames_read=index) from error
        flags = cv2.IMREAD_UNCHANGED
        if file.suffix.lower() in JPEG_SUFFIXES:
            # IMREAD_UNCHANGED ignores a JPEG's EXIF orientation (phone photos are often
            # stored sideways); any-colour decoding applies it, as image viewers do, and
            # changes nothing else for a JPEG (8-bit gray or colour)
            flags = cv2.IMREAD_ANYCOLOR
            turn = _EXIF_TURNS.get(_jpeg_orientation(data[:_JPEG_HEAD].tobytes()))
            if turn:
                self._note(f"JPEG images shown upright as their EXIF orientation asks ({turn})")
        image = cv2.imdecode(data, flags) if data.size else None
        if image is None:
            raise DecodeError(f"{file} is not an image OpenCV can decode (damaged or empty?); "
                              f"{index} frames were read before it", frames_read=index)
        return self._to_rgb(image, file)

    def _to_rgb(self, image: np.ndarray, file: Path) -> np.ndarray:
        import cv2

        if image.dtype in (np.float32, np.float64):
            self._note("floating-point images scaled from [0, 1] to 16-bit")
            image = np.clip(np.rint(image * 65535), 0, 65535).astype(np.uint16)
        elif image.dtype not in (np.uint8, np.uint16):
            raise SourceError(f"{file} has {image.dtype} samples; expected 8- or 16-bit images")
        # every frame of a folder has the first image's depth
        if self._dtype is None:
            self._dtype = image.dtype
            self.sampling = Sampling(bits=16 if image.dtype == np.uint16 else 8)
        if self._dtype == np.uint8 and image.dtype == np.uint16:
            self._note("16-bit images after 8-bit ones reduced to 8-bit (the first image "
                       "decides the depth)")
        image = to_depth(image, self._dtype)
        if image.ndim == 2 or image.shape[2] == 1:
            self._note("gray images converted to RGB")
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if image.shape[2] == 4:
            self._note("alpha channel dropped")
            return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _png_size(file: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk; None when the header is not a PNG's."""
    try:
        with open(file, "rb") as f:
            head = f.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


# EXIF orientations other than upright (1), by what showing the image upright takes
_EXIF_TURNS = {2: "mirrored left to right", 3: "turned 180 degrees",
               4: "mirrored top to bottom", 5: "mirrored and turned 90 degrees",
               6: "turned 90 degrees clockwise", 7: "mirrored and turned 90 degrees",
               8: "turned 90 degrees counterclockwise"}
_JPEG_HEAD = 1 << 17  # bytes: EXIF sits in an APP1 segment of at most 64 KiB near the start


def _jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (TIFF tag 0x0112) of a JPEG; 1 (upright) when it has none."""
    pos = 2  # after the start-of-image marker
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
            return _tiff_orientation(data[pos + 10:pos + 2 + length])
        if marker == 0xDA:  # start of scan: no metadata after it
            break
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    for k in range(struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # SHORT
            return struct.unpack(order + "H", entry[8:10])[0]
    return 1
