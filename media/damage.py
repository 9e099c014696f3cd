"""Frames a video decoder damaged, as its log tells.

FFmpeg conceals what it can of a damaged packet (a flipped bit, a cut) and flags few of the
frames it gives as corrupt: most damage shows only as an error in its log ("error while
decoding MB 7 4"). :class:`DamageWatch` listens to that log while each packet is decoded and
names the frame that packet gives. Damage a decoder cannot notice (a flip that still parses)
stays unseen: no reader can tell it from picture content.

Errors are tied to packets only when a packet is decoded by the calling thread: with frame
threads, FFmpeg reports a packet's errors while later packets are being decoded. Sources
decode with slice threads (most H.264/H.265 has one slice per picture, so one thread; the
decode of a low-resolution input is far faster than the model anyway).
"""

from __future__ import annotations

import logging
import threading

# A stream whose packets the decoder refuses this many times in a row is not damaged here
# and there but undecodable (a codec this FFmpeg lacks, a wrong header): stop
MAX_REFUSED_IN_A_ROW = 8
_LOGGER = "libav"  # PyAV sends FFmpeg's log to the Python loggers libav.<context name>
_lock = threading.Lock()
_watching = 0  # watches alive: PyAV's log level is raised while any is
_restore: tuple = ()  # PyAV's log level and skip-repeated setting before the first watch


class DamageWatch(logging.Handler):
    """Counts a decoder's logged errors per packet; ``damaged(frame)`` says whether a
    decoded frame came from a packet with errors (or is flagged corrupt).

    Listens from creation until ``close()``.

    Args:
        stream: the video stream (PyAV) whose decoder is watched.
    """

    def __init__(self, stream):
        super().__init__(logging.ERROR)
        self._name = f"{_LOGGER}.{stream.codec_context.name}"
        self._stream = stream
        self._errors = 0
        self._pts: set[int] = set()  # of packets decoded with errors, until their frame comes
        self._untimed = 0  # packets without pts decoded with errors: the next frames are theirs
        self.lost = 0  # packets the decoder refused: their frames are missing
        self._open = True
        _listen(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == self._name:  # not the audio decoder, an encoder or a muxer
            self._errors += 1

    def frames(self, container):
        """The stream's decoded frames, packet by packet, with errors counted per packet.

        A packet the decoder refuses (a flip in its slice header) is skipped, as FFmpeg's
        own tools do: its frame is missing, counted in ``lost``, and the next frame (whose
        reference it was) counted as damaged. Many refused in a row raise the error.
        """
        import av

        refused = 0
        for packet in container.demux(self._stream):
            before = self._errors
            try:
                decoded = packet.decode()
            except av.InvalidDataError:
                refused += 1
                if packet.size == 0 or refused > MAX_REFUSED_IN_A_ROW:
                    raise
                self.lost += 1
                self._untimed += 1
                continue
            refused = 0
            if self._errors > before:
                if packet.pts is not None:
                    self._pts.add(packet.pts)
                else:
                    self._untimed += 1
            yield from decoded

    def damaged(self, frame) -> bool:
        """Whether ``frame`` is flagged corrupt or came from a packet decoded with errors."""
        hit = frame.pts is not None and frame.pts in self._pts
        if hit:
            self._pts.discard(frame.pts)
        elif self._untimed:
            self._untimed -= 1
            hit = True
        return hit or frame.is_corrupt

    def close(self) -> None:
        if self._open:
            self._open = False
            _forget(self)
        super().close()


def _listen(watch: DamageWatch) -> None:
    import av.logging

    global _watching, _restore
    with _lock:
        if _watching == 0:
            level = av.logging.get_level()
            _restore = level, av.logging.get_skip_repeated()
            if level is None or level < av.logging.ERROR:  # None: PyAV drops FFmpeg's log
                av.logging.set_level(av.logging.ERROR)
            # a repeated message is held back until a different one comes: count each
            av.logging.set_skip_repeated(False)
        _watching += 1
        logging.getLogger(_LOGGER).addHandler(watch)


def _forget(watch: DamageWatch) -> None:
    import av.logging

    global _watching
    with _lock:
        logging.getLogger(_LOGGER).removeHandler(watch)
        _watching -= 1
        if _watching == 0:
            level, skip = _restore
            av.logging.set_level(level)
            av.logging.set_skip_repeated(skip)
