"""Frame sinks: a video file (PyAV: H.264, H.265, FFV1) or a folder of PNGs (OpenCV).

A sink writes into a hidden temporary in the destination folder
(``.NAME.<host>-<pid>-<random>.partial.mkv`` or a ``.partial`` folder) and renames it to the
final path only in a successful ``close()``; ``abort()``, an exception or Ctrl-C inside
``with open_sink(...)`` remove the temporary. A process killed outright (SIGKILL, power loss)
cannot clean up: the next run for the same output removes the temporaries of dead processes
of this host. The input's audio, subtitles, chapters, attachments and tags are copied through
while frames are written (media/streams.py), so nothing is buffered whole.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import socket
import weakref
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from hirn.core.errors import OutputExistsError, SinkError, is_out_of_memory
from hirn.media.colour import FULL, Colour
from hirn.media.pixels import format_bits, to_depth
from hirn.media.streams import StreamCopier

VIDEO_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
# codec name -> (FFmpeg encoder, pixel format for 8 bits); bgr0 keeps FFV1 lossless for RGB
# input (media/pixels.py has the formats of deeper sources)
VIDEO_CODECS = {"h264": ("libx264", "yuv420p"), "h265": ("libx265", "yuv420p"),
                "ffv1": ("ffv1", "bgr0")}
CODECS = (*VIDEO_CODECS, "png")
DEFAULT_CRF = 18
# PNGs use zlib's RLE strategy: 1.5-1.7x faster than the default on Vid4 frames and their 4x
# upscales, sizes within 2%; with it the level hardly matters
PNG_LEVEL = 3
# extra encoder options: quiet x265 (it prints to stderr itself); FFV1 version 3 with slices
# so it encodes on every core
ENCODER_OPTIONS = {"libx265": {"x265-params": "log-level=error"},
                   "ffv1": {"level": "3", "slices": "16", "slicecrc": "1"}}


class FrameSinkBase:
    """What the pipeline asks of every sink, an output's and ``--resume``'s segments alike:
    ``needs_window`` before each window, ``write(image, pts)``, and as a context manager
    ``close()`` after success or ``abort()`` after any exception (KeyboardInterrupt
    included)."""

    def needs_window(self, index: int, window) -> bool:
        """Whether the frames of window ``index`` must be computed and written next; a sink
        that keeps windows of an earlier run (``--resume``'s segments) says False for those."""
        return True

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class FrameSink(FrameSinkBase):
    """Writes ``[H, W, 3]`` RGB frames; the output appears only on a successful close().

    Use as a context manager; ``write(image, pts=None)`` adds a frame (pts in ``time_base``
    units, strictly increasing; None numbers frames at ``fps``). Frames are uint8, or uint16
    (full 16-bit scale) for formats of more than 8 bits; ``dtype`` says which the sink keeps
    whole (the other is converted).

    Attributes:
        path: the final output. width, height, fps, time_base, codec: as opened.
        pix_fmt: the pixel format written (FFmpeg's name). dtype: np.uint8 or np.uint16.
        frames_written: frames written so far.
        notes: what the sink could not carry over (e.g. audio into a PNG folder).
    """

    def __init__(self, path: Path, temp: Path, *, width: int, height: int, fps: Fraction,
                 time_base: Fraction, codec: str, overwrite: bool, pix_fmt: str):
        self.path, self._temp = path, temp
        self.width, self.height, self.fps, self.time_base = width, height, fps, time_base
        self.codec, self._overwrite = codec, overwrite
        self.pix_fmt = pix_fmt
        self.dtype = np.uint16 if format_bits(pix_fmt) > 8 else np.uint8
        self.frames_written = 0
        self.notes: list[str] = []
        self._last_pts: int | None = None
        self._done = False
        # removes the temporary if the sink is dropped or the interpreter exits unclosed
        self._cleanup = weakref.finalize(self, _remove, temp)

    # -- public ------------------------------------------------------------------------------

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Add one frame: ``image`` [H, W, 3] uint8 or uint16 RGB, ``pts`` in time_base units
        or None."""
        if self._done:
            raise RuntimeError(f"the sink for {self.path} is already closed")
        if (not isinstance(image, np.ndarray) or image.dtype not in (np.uint8, np.uint16)
                or image.shape != (self.height, self.width, 3)):
            got = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
            raise ValueError(f"expected a [{self.height}, {self.width}, 3] uint8 or uint16 RGB "
                             f"frame, got shape {got[0]} dtype {got[1]}")
        image = to_depth(image, self.dtype)
        if pts is None:
            pts = round(self.frames_written / (self.fps * self.time_base))
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        self._guarded(self._write, np.ascontiguousarray(image), int(pts))
        self._last_pts = int(pts)
        self.frames_written += 1

    def close(self) -> None:
        """Finish the output and move it into place; on failure nothing is left behind."""
        if self._done:
            return
        self._guarded(self._finish)
        self._guarded(self._publish)
        self._done = True
        self._cleanup.detach()

    def abort(self) -> None:
        """Drop the output: the temporary is removed and the destination left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self._release()
        finally:
            self._cleanup()


    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {self.codec}, "
                f"{self.width}x{self.height}, frames={self.frames_written})")

    # -- for subclasses ----------------------------------------------------------------------

    def _write(self, image: np.ndarray, pts: int) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Flush encoders and close files (the temporary is complete afterwards)."""

    def _release(self) -> None:
        """Close whatever is open, ignoring errors (used when aborting)."""

    # -- shared ------------------------------------------------------------------------------

    def _guarded(self, action, *args) -> None:
        try:
            action(*args)
        except BaseException as error:
            self.abort()
            if isinstance(error, OSError) and not is_out_of_memory(error):
                raise os_error(error, self.path) from error
            raise

    def _publish(self) -> None:
        if not self._overwrite and self.path.exists() and not _empty_folder(self.path):
            # appeared while we were writing
            raise OutputExistsError(self.path, "appeared while writing")
        _sync(self._temp)  # on disk before the rename, so that a crash never leaves a
        # complete-looking name over data still in the page cache
        if self._temp.is_dir() and self.path.is_dir() and any(self.path.iterdir()):
            # rename() cannot replace a non-empty folder: swap it aside, then delete it
            old = _temp_name(self.path, ".old")
            os.rename(self.path, old)
            try:
                os.rename(self._temp, self.path)
            except BaseException:
                os.rename(old, self.path)  # put the previous output back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self._temp, self.path)
        _sync_folder(self.path.parent)  # the rename itself


class VideoSink(FrameSink):
    """A video file: H.264 / H.265 (yuv420p, CRF) or lossless FFV1 (bgr0), audio copied in;
    H.265 in yuv420p10le (Main10) and FFV1 in gbrp16le for sources of more than 8 bits.

    ``colour`` (the source's) decides the matrix and range of the RGB -> YUV conversion and the
    output's colour tags; None: BT.709 limited range, primaries and transfer untagged.
    """

    def __init__(self, path: Path, temp: Path, *, audio_from: Path | None,
                 sample_aspect_ratio: Fraction | None, crf: int | None,
                 colour: Colour | None = None, **common):
        super().__init__(path, temp, **common)
        import av

        encoder, pix_fmt = VIDEO_CODECS[self.codec][0], self.pix_fmt
        self._container = None
        self._other_streams = None
        self._pix_fmt = pix_fmt
        self.colour = colour or Colour()
        if _is_luma(pix_fmt):
            # FFmpeg reads gray formats as full range whatever their tag (H.265 and FFV1
            # decode to gray; H.264 decodes to yuv420p and reads the tag, also written)
            self.colour = replace(self.colour, range=FULL)
        try:
            self._container = av.open(str(temp), "w", format=VIDEO_FORMATS[path.suffix.lower()])
            options = dict(ENCODER_OPTIONS.get(encoder, {}))
            if crf is not None:
                options["crf"] = str(crf)
            if crf == 0 and encoder == "libx265":
                # x264 is lossless at CRF 0, x265 only when told: the same promise for both
                options["x265-params"] += ":lossless=1"
            stream = self._container.add_stream(encoder, rate=self.fps, options=options)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
            ctx = stream.codec_context
            ctx.time_base = self.time_base
            if encoder == "ffv1":
                ctx.thread_type = "SLICE"  # its slices encode in parallel (x26x thread anyway)
            self._tag(ctx)
            if sample_aspect_ratio:  # kept by H.264 / H.265 (FFV1 in matroska drops it)
                stream.sample_aspect_ratio = ctx.sample_aspect_ratio = sample_aspect_ratio
            if encoder == "libx265" and path.suffix.lower() in (".mp4", ".mov"):
                ctx.codec_tag = "hvc1"  # what Apple players require for HEVC
            self._stream = stream
            if audio_from is not None:  # audio, subtitles, chapters, attachments, tags
                self._other_streams = StreamCopier(audio_from, self._container, stream)
                self.notes.extend(self._other_streams.notes)
            if _is_luma(pix_fmt):
                self.notes.append(f"written in {pix_fmt}: luma only, without colour")
        except BaseException:
            self.abort()
            raise

    def _tag(self, target) -> None:
        """Write the colour tags on the codec context and on each frame (encoders read one or
        the other)."""
        colour = self.colour
        if self._pix_fmt.startswith("yuv") or _is_luma(self._pix_fmt):
            # the matrix and range the frames are converted with: always tagged, so that a
            # player never guesses (an SD source's BT.601 would be taken for BT.709 at 4x)
            target.colorspace, target.color_range = colour.matrix, colour.range
        # primaries and transfer describe the RGB values too (FFV1's bgr0 keeps them)
        target.color_primaries, target.color_trc = colour.primaries, colour.transfer

    def _write(self, image: np.ndarray, pts: int) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image, format=rgb_format(image))
        if self._pix_fmt.startswith("yuv"):
            frame = self._to_yuv(frame, self._pix_fmt)
        elif _is_luma(self._pix_fmt):
            frame = self._to_luma(frame)
        self._tag(frame)
        frame.pts, frame.time_base = pts, self.time_base
        self._container.mux(self._stream.encode(frame))
        if self._other_streams is not None:
            self._other_streams.copy_until(float(pts * self.time_base))

    def _to_yuv(self, frame, pix_fmt: str):
        return frame.reformat(format=pix_fmt, dst_colorspace=self.colour.swscale_matrix,
                              dst_color_range=self.colour.range)

    def _to_luma(self, frame):
        """The luma of a YUV conversion alone, with the output's matrix (swscale's own
        RGB -> gray takes BT.601 whatever it is asked)."""
        import av

        yuv = self._to_yuv(frame, self._pix_fmt.replace("gray", "yuv444p"))
        plane = yuv.planes[0]
        dtype = "<u2" if self.dtype == np.uint16 else "u1"  # (the le formats encoders take)
        rows = np.frombuffer(plane, dtype).reshape(plane.height, -1)[:, :plane.width]
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(rows), format=self._pix_fmt)

    def _finish(self) -> None:
        packets = self._stream.encode(None)
        if self.frames_written == 1:
            # libx265 leaves the dts of a one-frame stream uninitialised (garbage that the
            # MP4 muxer refuses, or worse, accepts); one frame decodes when it is shown
            for packet in packets:
                packet.dts = packet.pts
        self._container.mux(packets)
        if self._other_streams is not None:
            self._other_streams.copy_until(None)
            self._other_streams.close()
            # what the copy found at the input's end (tracks without packets)
            self.notes.extend(n for n in self._other_streams.notes if n not in self.notes)
        if self.frames_written == 0:
            raise SinkError(f"no frames were written to {self.path}: nothing to save")
        self._container.close()
        self._container = None

    def _release(self) -> None:
        close_quietly(self._other_streams, self._container)
        self._other_streams = self._container = None


def _is_luma(pix_fmt: str) -> bool:
    """Whether a pixel format holds luma alone (gray, gray10le, ...)."""
    return pix_fmt.startswith("gray")


def close_quietly(*things) -> None:
    """Close what is open while aborting: an error there changes nothing (the temporary
    output goes anyway)."""
    for thing in things:
        if thing is not None:
            try:
                thing.close()
            except Exception:
                pass


class ImageFolderSink(FrameSink):
    """A folder of PNGs named ``000000.png``, ``000001.png``, ..., 8-bit or (pix_fmt
    rgb48be) 16-bit (timestamps are not kept: uneven ones are noted)."""

    def _write(self, image: np.ndarray, pts: int) -> None:
        import cv2

        self._note_uneven_timing(pts)

        ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL,
                                 cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a PNG")
        write_file(self._temp / f"{self.frames_written:06d}.png", data)

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise SinkError(f"no frames were written to {self.path}: nothing to save")

    def _note_uneven_timing(self, pts: int) -> None:
        if self._last_pts is None:
            return
        # a tick of slack: 29.97 frames/s in milliseconds alternates 33 and 34
        period = 1 / (self.fps * self.time_base)
        if abs((pts - self._last_pts) - period) > max(1, period / 100):
            text = ("the input's frames are not evenly spaced in time (a variable frame "
                    "rate): a folder of PNGs keeps their order, not their timing; write a "
                    "video (.mkv, .mp4) to keep it")
            if text not in self.notes:
                self.notes.append(text)


def rgb_format(image: np.ndarray) -> str:
    """PyAV's name for packed RGB of this array's depth."""
    return "rgb48le" if image.dtype == np.uint16 else "rgb24"


def _sync(path: Path) -> None:
    """Flush a file, or a folder's files and the folder, to the disk."""
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    if path.is_dir():
        _sync_folder(path)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a folder that cannot be opened (some file systems): nothing to sync
    try:
        os.fsync(fd)
    except OSError:
        pass  # file systems that cannot sync a folder
    finally:
        os.close(fd)


def write_file(path: Path, data: np.ndarray) -> None:
    """Write bytes to a file (one place, so tests can stand in a full disk)."""
    with open(path, "wb") as f:
        f.write(data.tobytes() if isinstance(data, np.ndarray) else data)


def os_error(error: OSError, path: Path) -> SinkError:
    """A SinkError naming ``path`` for a failed write: disk full, no permission, ..."""
    folder = path.parent
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return SinkError(f"no space left while writing {path}: free space on the disk of "
                         f"{folder} or write elsewhere")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return SinkError(f"cannot write into {folder} ({os.strerror(code)}): choose a folder "
                         f"you may write to")
    return SinkError(f"writing {path} failed: {getattr(error, 'strerror', None) or error}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _temp_name(path: Path, suffix: str) -> Path:
    # host and pid: a later run can tell a dead writer's leftovers from a live one's;
    # random part: two processes writing the same output never share a temporary
    return path.with_name(f".{path.stem}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
                          f"{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporaries for ``path`` left by killed processes of this host.

    Only names this module makes, with this host's name and the pid of a process that no
    longer exists: a run on another machine sharing the folder is never touched.
    """
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.{_host()}-(\d+)-[0-9a-f]{{8}}\.partial")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if match and not _alive(int(match.group(1))):  # our own pid is alive too
            _remove(sibling)
            removed.append(sibling)
    return removed


def make_temp(path: Path, folder: bool) -> Path:
    """Create the hidden temporary for ``path`` next to it (this also proves the folder
    writable); raise SinkError naming the folder when it is not. Leftovers of killed runs
    for the same output are removed first."""
    remove_stale_temps(path)
    temp = _temp_name(path, ".partial" if folder else f".partial{path.suffix}")
    try:
        if folder:
            temp.mkdir()
        else:
            with open(temp, "xb"):
                pass
    except OSError as error:
        raise os_error(error, path) from error
    return temp


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _remove(path: Path | None) -> None:
    if path is None:  # a sink without a temporary (a pipe)
        return
    try:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass
