"""Video and image-folder I/O for the runtime: ``open_source`` to read, ``open_sink`` to write.

Streaming: a source decodes one frame at a time as it is iterated (``for image, pts in
source``), and a sink encodes each frame as it is written, copying the input's audio packets
alongside; neither ever holds a whole video, so memory does not grow with its length.

Atomic writes: a sink writes to a hidden temporary in the destination folder
(``.NAME.<random>.partial.mkv``, or a ``.partial`` folder of PNGs) and renames it to the output
path only when ``close()`` succeeds. An exception or Ctrl-C inside ``with open_sink(...) as
sink:``, or ``sink.abort()``, removes the temporary: the destination is either complete or
untouched. The input is only ever opened for reading, and a sink refuses to write over it.

Frames are ``[H, W, 3]`` RGB arrays: uint8, or uint16 for sources of more than 8 bits, whose
outputs keep them by default (``source.sampling``; media/pixels.py). Inputs in gray or with
alpha are converted, and each conversion is said once in ``source.notes``. ``-`` reads and
writes a YUV4MPEG2 pipe (media/y4m.py). A single image file is
refused (put it in a folder): a file must be a video. A video's colour (matrix, range,
primaries, transfer; guessed by size where untagged) is in ``source.colour``: a sink given it
converts back with the same matrix and range and tags the output with all four.

Example::

    source = open_source("clip.mp4")
    with open_sink("clip_x4.mp4", width=4 * source.width, height=4 * source.height,
                   fps=source.fps, time_base=source.time_base, audio_from=source,
                   input_path=source.path, colour=source.colour) as sink:
        for image, pts in source:
            sink.write(upscale(image), pts)
"""

from __future__ import annotations

import os
from fractions import Fraction
from itertools import islice
from pathlib import Path

import numpy as np

from hirn.core.errors import OutputExistsError, SinkError, SourceError
from hirn.media.colour import Colour
from hirn.media.pixels import Sampling, choose_format
from hirn.media.streams import frames_only_notes
from hirn.media.video_reader import (
    IMAGE_SUFFIXES,
    Frame,
    FrameSource,
    ImageFolderSource,
    VideoSource,
)
from hirn.media.video_writer import (
    CODECS,
    DEFAULT_CRF,
    VIDEO_CODECS,
    VIDEO_FORMATS,
    FrameSink,
    ImageFolderSink,
    VideoSink,
    make_temp,
)

__all__ = ["CODECS", "Frame", "FrameSink", "FrameSource", "open_sink", "open_source",
           "read_frames"]


def open_source(path: str | os.PathLike, *, fps: float | Fraction | None = None,
                strict: bool = False) -> FrameSource:
    """Open a video file or a folder of images for reading, one frame at a time.

    Args:
        path: a video in any container and codec FFmpeg decodes, or a folder of images
            (png, jpg, bmp, tif, ...) taken in natural name order.
        fps: frame rate of an image folder (default 25); a video's own rate always applies.
        strict: a Y4M stream (``-``) that ends inside a frame is an error, not a note.

    Raises:
        SourceError: the path is missing, not a video, empty, or holds images of mixed sizes.
        DecodeError: the first frame cannot be decoded.
    """
    from hirn.media import y4m

    if y4m.is_pipe(path):
        return y4m.Y4MSource(strict=strict)
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist: check the path")
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise SourceError(f"{path} is a single image, not a video: to upscale images, put them "
                          f"in a folder and pass the folder")
    if path.stat().st_size == 0:
        raise SourceError(f"{path} is empty (0 bytes): it holds no video")
    return VideoSource(path)


def read_frames(path: str | os.PathLike, start: int = 0, count: int | None = None) -> np.ndarray:
    """Frames ``start`` to ``start + count`` (all the rest if None), as ``[N, H, W, 3]`` uint8.

    Decodes from the beginning (exact, not fast): for tests and short clips.
    """
    stop = None if count is None else start + count
    images = [frame.image for frame in islice(open_source(path), start, stop)]
    if not images:
        raise SourceError(f"{path} has no frames from index {start}")
    return np.stack(images)


def open_sink(path: str | os.PathLike, *, width: int, height: int, fps: float | Fraction,
              codec: str | None = None, crf: int | None = None,
              audio_from: FrameSource | str | os.PathLike | None = None,
              time_base: Fraction | None = None, sample_aspect_ratio: Fraction | None = None,
              overwrite: bool = False, input_path: str | os.PathLike | None = None,
              colour: Colour | None = None, sampling: Sampling | None = None,
              pix_fmt: str | None = None) -> FrameSink:
    """Open a video file or a PNG folder for writing; it appears only on a successful close().

    Args:
        path: ``.mp4``, ``.mkv`` or ``.mov`` for a video; a path without extension (or an
            existing folder) for PNGs ``000000.png``, ``000001.png``, ...; ``-`` for a
            YUV4MPEG2 stream on standard output.
        width, height: frame size; H.264 and H.265 (yuv420p) need both even.
        fps: frame rate (written to the container; numbers frames written without pts).
        codec: ``h264`` (default for videos), ``h265`` (default for videos of a source of
            more than 8 bits), ``ffv1`` (lossless, ``.mkv`` only) or ``png`` (default for
            folders).
        crf: quality of h264 / h265, 0-51, lower is better (default 18).
        audio_from: a source or file whose other streams and tags are copied in: audio,
            subtitles, chapters, attachments, metadata (media/streams.py; what the
            container cannot hold is named in the sink's notes); PNG folders note them.
        time_base: unit of the pts given to ``write`` (default ``1 / fps``); pass the
            source's to carry its timestamps over.
        sample_aspect_ratio: pixel aspect ratio to record (the source's, for anamorphic video).
        overwrite: replace an existing output (a folder only if it holds nothing but PNGs).
        input_path: the input being read: refused as the output, like ``audio_from``.
        colour: the source's ``colour``: a video is converted back to YUV with its matrix and
            range and tagged with them, its primaries and transfer (default: BT.709 limited
            range, primaries and transfer untagged); PNGs are RGB and carry no tags.
        sampling: the source's: above 8 bits, the output keeps them (H.265 in yuv420p10le,
            FFV1 in gbrp16le, 16-bit PNGs) unless ``pix_fmt`` says otherwise; a pipe
            keeps the source's format and chroma siting.
        pix_fmt: the pixel format to write (FFmpeg's name, e.g. yuv444p10le, rgb48be for
            16-bit PNGs); None: as ``sampling`` decides.

    Raises:
        SinkError: bad codec / container / size / crf, the output is an input, exists, or its
            folder is missing or not writable.
    """
    from hirn.media import y4m

    sampling = sampling or Sampling()
    fps = Fraction(fps).limit_denominator(1_000_000)
    if y4m.is_pipe(path):
        if codec is not None:
            raise SinkError(f"-o - writes a YUV4MPEG2 stream: --codec {codec} does not apply "
                            f"(choose its format with --pix-fmt)")
        chosen, notes = choose_format("y4m", sampling, pix_fmt)
        sink = y4m.Y4MSink(y4m.stdout_stream(), width=int(width), height=int(height), fps=fps,
                           time_base=Fraction(time_base) if time_base else 1 / fps,
                           pix_fmt=chosen, colour=colour, siting=sampling.siting,
                           sample_aspect_ratio=sample_aspect_ratio)
        sink.notes.extend(notes)
        if getattr(audio_from, "has_audio", audio_from is not None):
            sink.notes.append("audio not written: a YUV4MPEG2 stream holds video only")
        return sink
    path = Path(path)
    codec = _resolve_codec(path, codec, sampling.bits > 8)
    folder = codec == "png"
    width, height = int(width), int(height)
    if width < 1 or height < 1 or fps <= 0:
        raise SinkError(f"cannot write {width}x{height} frames at {fps} frames/s to {path}")
    if codec in ("h264", "h265") and (width % 2 or height % 2):
        raise SinkError(f"{codec} (yuv420p) needs an even width and height, got {width}x{height}:"
                        f" use ffv1 or png for odd sizes")
    if crf is not None and codec not in ("h264", "h265"):
        raise SinkError(f"crf applies to h264 and h265 only, not to {codec}")
    if crf is not None and not 0 <= crf <= 51:
        raise SinkError(f"crf must be within 0-51 (lower is better quality), got {crf}")
    audio_path = audio_from.path if isinstance(audio_from, FrameSource) else audio_from
    _check_destination(path, folder, overwrite, [Path(p) for p in (input_path, audio_path)
                                                 if p is not None and not y4m.is_pipe(p)])
    chosen, notes = choose_format(codec, sampling, pix_fmt)
    if isinstance(audio_from, FrameSource) and not (audio_from.has_audio or audio_from.extras):
        audio_path = None  # nothing to copy besides the frames
    if audio_path is not None and Path(audio_path).is_dir():
        audio_path = None  # an image folder has no audio
    time_base = Fraction(time_base) if time_base else 1 / fps
    common = dict(width=width, height=height, fps=fps, time_base=time_base, codec=codec,
                  overwrite=overwrite, pix_fmt=chosen)
    temp = make_temp(path, folder)
    if folder:
        sink = ImageFolderSink(path, temp, **common)
        if audio_path is not None:
            sink.notes.extend(frames_only_notes(audio_from, "a folder of PNGs"))
    else:
        sink = VideoSink(path, temp, audio_from=audio_path,
                         sample_aspect_ratio=sample_aspect_ratio,
                         crf=DEFAULT_CRF if crf is None and codec != "ffv1" else crf,
                         colour=colour, **common)
    sink.notes.extend(notes)
    return sink


def _resolve_codec(path: Path, codec: str | None, deep: bool = False) -> str:
    suffix = path.suffix.lower()
    is_video = suffix in VIDEO_FORMATS
    is_folder = path.is_dir() or (not suffix and not path.is_file())
    kinds = f"a video ({', '.join(VIDEO_FORMATS)}) or a folder (a path without extension)"
    if not is_video and not is_folder:
        raise SinkError(f"cannot tell what to write for {path}: name {kinds}")
    if codec is None:  # H.265 Main10 keeps a deep source's bits where players decode them
        return ("h265" if deep else "h264") if is_video else "png"
    if codec not in CODECS:
        raise SinkError(f"unknown codec {codec!r}: choose one of {', '.join(CODECS)}")
    if codec == "png" and is_video:
        raise SinkError(f"png writes a folder of images, not {path.name}: give a folder path, "
                        f"or choose {', '.join(VIDEO_CODECS)} for a video")
    if codec != "png" and not is_video:
        raise SinkError(f"{codec} writes a video: name the output .mp4, .mkv or .mov "
                        f"(or choose png for a folder of images)")
    if codec == "ffv1" and suffix != ".mkv":
        raise SinkError(f"FFV1 is written to .mkv only (MP4 and MOV players cannot read it): "
                        f"name the output {path.with_suffix('.mkv').name}")
    return codec


def _check_destination(path: Path, folder: bool, overwrite: bool, inputs: list[Path]) -> None:
    for source in inputs:
        if _same_path(path, source):
            raise SinkError(f"the output {path} is the input {source}: choose another output "
                            f"path (the input is never overwritten)")
    parent = path.parent
    if not parent.is_dir():
        raise SinkError(f"the output folder {parent} does not exist: create it first")
    if not path.exists():
        return
    if folder and not path.is_dir():
        raise SinkError(f"{path} is a file, not a folder: choose another output for the PNGs")
    if not folder and path.is_dir():
        raise SinkError(f"{path} is a folder: choose a file name for the video")
    if folder and not any(path.iterdir()):
        return  # an empty folder made for the output
    if not overwrite:
        raise OutputExistsError(path)
    if folder:
        others = [p.name for p in path.iterdir() if p.suffix.lower() != ".png" or p.is_dir()]
        if others:
            raise SinkError(f"{path} holds files other than PNGs (e.g. {others[0]}): refusing "
                            f"to replace it; choose an empty or new folder")


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or folder (through links, hard links included)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
