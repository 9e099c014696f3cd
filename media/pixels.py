"""Bit depth and pixel formats: what a source holds, and the format an output is written in.

A source with more than 8 bits per sample is decoded to 16-bit RGB and its output keeps them
by default (H.265 Main10, FFV1 and PNG at 16 bits); 8-bit sources stay 8-bit. ``--pix-fmt``
names another format (FFmpeg's names). Nothing heavy is imported here; the encoders' lists of
formats are read from PyAV only when a format is asked for by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hirn.core.errors import SinkError

# pixel format -> its YUV4MPEG2 C tag: what a Y4M pipe carries (media/y4m.py)
Y4M_FORMATS = {"yuv420p": "420", "yuv422p": "422", "yuv444p": "444", "yuv411p": "411",
               **{f"yuv{c}p{b}le": f"{c}p{b}" for c in (420, 422, 444)
                  for b in (9, 10, 12, 14, 16)},
               "gray": "mono", **{f"gray{b}le": f"mono{b}" for b in (9, 10, 12, 16)}}
# codec -> (format for 8-bit sources, format for deeper ones); y4m is the pipe output
DEFAULT_FORMATS = {"h264": ("yuv420p", "yuv420p"), "h265": ("yuv420p", "yuv420p10le"),
                   "ffv1": ("bgr0", "gbrp16le"), "png": ("rgb24", "rgb48be"),
                   "y4m": ("yuv420p", "yuv420p10le")}
PNG_FORMATS = ("rgb24", "rgb48be")  # what the PNG folder writer (OpenCV) takes
ENCODERS = {"h264": "libx264", "h265": "libx265", "ffv1": "ffv1"}


@dataclass(frozen=True)
class Sampling:
    """How a source's samples are stored: what its output keeps by default."""

    bits: int = 8                # bits per sample (of the deepest component)
    pix_fmt: str | None = None   # FFmpeg's name of the decoded format, e.g. yuv420p10le
    siting: str | None = None    # 4:2:0 chroma siting from a Y4M header: jpeg, mpeg2, paldv


def format_bits(pix_fmt: str) -> int:
    """Bits per sample of an FFmpeg pixel format (its deepest component)."""
    import av

    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


def choose_format(codec: str, sampling: Sampling, requested: str | None,
                  formats: tuple[str, ...] | None = None) -> tuple[str, list[str]]:
    """The output's pixel format, and notes on what it cannot keep.

    Args:
        codec: h264, h265, ffv1, png, or y4m (a pipe).
        sampling: the source's; above 8 bits the output keeps them by default.
        requested: ``--pix-fmt``, or None for the default.
        formats: the formats ``codec`` can be written in (None: asked of its encoder).
    """
    if formats is None:
        formats = encoder_formats(codec)
    if requested is not None:
        if requested not in formats:
            raise SinkError(f"{codec} cannot be written in pixel format {requested!r}: choose "
                            f"one of {', '.join(formats)}")
        chosen = requested
    else:
        chosen = DEFAULT_FORMATS[codec][sampling.bits > 8]
        if codec == "y4m" and sampling.pix_fmt in formats:
            chosen = sampling.pix_fmt  # a pipe passes the input's format through
        elif codec == "y4m" and sampling.bits > 10:
            chosen = "yuv420p12le" if sampling.bits <= 12 else "yuv420p16le"
    notes = []
    kept = format_bits(chosen)
    if kept < sampling.bits:
        hint = ("--codec h265 (Main10), ffv1 or png keep them" if codec == "h264" else
                "--pix-fmt or --codec ffv1 / png keep more")
        notes.append(f"the input has {sampling.bits} bits per sample; the output is written "
                     f"in {chosen}, {kept} bits ({hint})")
    return chosen, notes


def encoder_formats(codec: str) -> tuple[str, ...]:
    """The pixel formats ``codec`` can be written in here."""
    if codec == "png":
        return PNG_FORMATS
    if codec == "y4m":
        return tuple(Y4M_FORMATS)
    import av

    listed = av.codec.Codec(ENCODERS[codec], "w").video_formats or ()
    # formats with alpha, palettes or interleaved chroma add nothing to an RGB picture;
    # yuvj (full range by name) and float ones are left out: --pix-fmt takes the plain ones
    return tuple(f.name for f in listed if not f.has_palette
                 and not any(c.is_alpha for c in f.components)
                 and not f.name.startswith(("nv", "ya", "yuvj"))
                 and not f.name.endswith(("f16le", "f32le")))


def to_depth(image: np.ndarray, dtype) -> np.ndarray:
    """``image`` (uint8 or uint16 RGB) as ``dtype``: 8 -> 16 bits exactly (x 257), 16 -> 8
    rounded."""
    if image.dtype == dtype:
        return image
    if dtype == np.uint16:
        return image.astype(np.uint16) * 257
    return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
