"""A video's colour description (matrix, range, primaries, transfer), read from the source and
written on the output, so YUV -> RGB -> YUV uses the same matrix and range both ways.

Values are FFmpeg's ``AVCOL_*`` numbers, the ones stream and frame tags use. Nothing heavy is
imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

# AVColorSpace (the YUV <-> RGB matrix)
RGB, BT709, UNSPECIFIED, FCC, BT470BG, SMPTE170M, SMPTE240M, BT2020_NCL, BT2020_CL = (
    0, 1, 2, 4, 5, 6, 7, 9, 10)
# AVColorRange
RANGE_UNSPECIFIED, LIMITED, FULL = 0, 1, 2
# AVColorTransferCharacteristic of HDR video
PQ, HLG = 16, 18

# matrix -> swscale's matrix (PyAV's Colorspace values); 601 has two tags, 2020 CL is taken as
# NCL (swscale has no constant-luminance path)
_SWSCALE = {BT709: 1, FCC: 4, BT470BG: 5, SMPTE170M: 5, SMPTE240M: 7, BT2020_NCL: 9,
            BT2020_CL: 9}
_MATRIX_NAMES = {BT709: "BT.709", FCC: "FCC", BT470BG: "BT.601", SMPTE170M: "BT.601",
                 SMPTE240M: "SMPTE 240M", BT2020_NCL: "BT.2020", BT2020_CL: "BT.2020 (CL)"}
_HDR_NAMES = {PQ: "PQ (SMPTE 2084)", HLG: "HLG (ARIB STD-B67)"}


@dataclass(frozen=True)
class Colour:
    """How a video's samples map to colours (FFmpeg's ``AVCOL_*`` numbers)."""

    matrix: int = BT709  # AVColorSpace: the YUV <-> RGB matrix
    range: int = LIMITED  # AVColorRange: LIMITED (16-235) or FULL (0-255)
    primaries: int = 2  # AVColorPrimaries; 2 = unspecified (copied as it came)
    transfer: int = 2  # AVColorTransferCharacteristic; 2 = unspecified (copied as it came)

    @property
    def swscale_matrix(self) -> int:
        """The matrix for PyAV's ``reformat`` (its ``Colorspace`` numbers); BT.709 for
        matrices swscale lacks (YCgCo, ICtCp): used both ways, so the values still return."""
        return _SWSCALE.get(self.matrix, 1)

    @property
    def converts_exactly(self) -> bool:
        """Whether swscale has this matrix (else BT.709 stands in, both ways)."""
        return self.matrix in _SWSCALE

    @property
    def hdr(self) -> str | None:
        """The HDR transfer's name (PQ, HLG), or None for SDR."""
        return _HDR_NAMES.get(self.transfer)

    def describe(self) -> str:
        """E.g. ``BT.601 limited range``."""
        matrix = _MATRIX_NAMES.get(self.matrix, f"matrix {self.matrix}")
        return f"{matrix} {'full' if self.range == FULL else 'limited'} range"


def guess_matrix(width: int, height: int) -> int:
    """The matrix players assume for untagged video: BT.601 below HD sizes, else BT.709."""
    return BT709 if width >= 1280 or height >= 720 else SMPTE170M


def read_colour(frame, codec_context, width: int, height: int) -> Colour:
    """The colour of a decoded YUV video: the frame's tags, else the stream's, else the
    usual guess (BT.601 for SD, BT.709 for HD; limited range)."""

    def tag(name: str, unspecified: int) -> int:
        for owner in (frame, codec_context):
            value = int(getattr(owner, name, unspecified) or unspecified)
            if value != unspecified:
                return value
        return unspecified

    matrix = tag("colorspace", UNSPECIFIED)
    if matrix in (UNSPECIFIED, RGB):  # RGB on a YUV stream is a mistagged file
        matrix = guess_matrix(width, height)
    colour_range = tag("color_range", RANGE_UNSPECIFIED)
    return Colour(matrix=matrix, range=FULL if colour_range == FULL else LIMITED,
                  primaries=tag("color_primaries", 2), transfer=tag("color_trc", 2))
