"""Errors of the video runtime: what was wrong with an input or an output, and what to do.

Bugs stay plain exceptions; these are for a user's files and options.
"""

from __future__ import annotations

from hirn.train.errors import HirnError


class MediaError(HirnError):
    """A video or image folder that cannot be read or written as asked."""


class SourceError(MediaError, ValueError):
    """An input that is missing, not a video, empty, or whose images differ in size."""


class DecodeError(SourceError):
    """A video or image that stopped decoding part-way (unreadable or truncated).

    Args:
        frames_read: how many frames were decoded before the failure.
    """

    def __init__(self, message: str, frames_read: int):
        super().__init__(message)
        self.frames_read = frames_read


class SinkError(MediaError):
    """An output that cannot be written: it exists, is the input, its folder is not
    writable or is full, or the codec does not fit the container."""
