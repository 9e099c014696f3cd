"""Lists in messages, written one way everywhere."""

from __future__ import annotations

SHOWN_FRAMES = 5  # frame numbers listed in a message before "and N more"


def name_frames(frames: list[int]) -> str:
    """``frame 3``, ``frames 3, 8, 9``, or the first few ``and N more``."""
    shown = ", ".join(map(str, frames[:SHOWN_FRAMES]))
    hidden = len(frames) - SHOWN_FRAMES
    more = f" and {hidden} more" if hidden > 0 else ""
    return f"{'frame' if len(frames) == 1 else 'frames'} {shown}{more}"
