"""Everything of an input besides its video frames, carried into an output video container.

Audio, subtitles, cover pictures and data tracks are remuxed packet by packet (audio the
container refuses is encoded to AAC; text subtitles it refuses are converted to its own text
format: mov_text in MP4/MOV, SubRip in Matroska); attachments (fonts), chapters, container
metadata (title, ...), each stream's metadata (language, title) and its disposition
(default, forced, ...) are set before the header is written. The main video stream keeps
its language, title, disposition and timecode. What the output container cannot hold is
named in ``notes``. Packets are copied in step with the frames (``copy_until``), so nothing
is held whole.
"""

from __future__ import annotations

from pathlib import Path

from hirn.core.errors import SourceError

# Formats (FFmpeg names) that take attachments such as fonts; MP4 and MOV hold none.
ATTACHMENT_FORMATS = ("matroska",)
# Formats that keep a cover picture stream (MP4's covr atom); FFmpeg's MOV muxer drops it.
COVER_FORMATS = ("mp4",)
# Formats whose muxer writes no track that received no packet (FFmpeg's MP4 and MOV muxer).
EMPTY_TRACK_DROPPING_FORMATS = ("mp4", "mov")
# Text subtitles a container refuses are converted to the one it holds.
TEXT_SUBTITLE_CODECS = {"matroska": "subrip", "mp4": "mov_text", "mov": "mov_text"}
# Tags a muxer writes itself, or that describe the old encoding of the video: not copied.
_CONTAINER_TAGS_SKIPPED = {"encoder", "major_brand", "minor_version", "compatible_brands",
                           "duration"}
_IMAGE_TYPES = {"mjpeg": ("jpg", "image/jpeg"), "png": ("png", "image/png"),
                "bmp": ("bmp", "image/bmp"), "webp": ("webp", "image/webp")}
_SHOWN_FORMATS = {"matroska": "MKV", "mp4": "MP4", "mov": "MOV"}
_DISCARD_ALL = 48  # AVDISCARD_ALL: a stream the demuxer itself never reads
_VIDEO_TAGS_SKIPPED = {"encoder", "duration", "bps", "number_of_frames", "number_of_bytes",
                       "vendor_id", "handler_name", "timecode"}


def main_video(container):
    """The video stream a source reads: the first that is not a cover picture."""
    return next(s for s in container.streams.video if not _is_cover(s))


def describe_extras(container, video_index: int) -> tuple[str, ...]:
    """What an open input holds besides its main video: ``("2 audio streams", "chapters",
    ...)``, for notes on outputs that keep none of it."""
    counts: dict[str, int] = {}
    for stream in container.streams:
        if stream.index == video_index or stream.discard == _DISCARD_ALL:
            continue  # (MP4's chapter text track: counted as chapters)
        kind = "cover picture" if _is_cover(stream) else "timecode track" if (
            stream.type == "data" and _is_timecode(stream)) else {
            "video": "other video stream", "data": "data track",
            "attachment": "attachment"}.get(stream.type, f"{stream.type} stream")
        counts[kind] = counts.get(kind, 0) + 1
    extras = [f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in counts.items()]
    if container.chapters():
        extras.append("chapters")
    if any(key.lower() not in _CONTAINER_TAGS_SKIPPED for key in container.metadata):
        extras.append("metadata")
    return tuple(extras)


def frames_only_notes(source, output: str) -> list[str]:
    """Notes for an output that holds frames only (``output``: "a folder of PNGs"): the
    audio and everything else ``source`` (a frame source, or a file) holds is not written."""
    extras = getattr(source, "extras", None)
    if extras is None:  # a path: look at it
        import av

        try:
            with av.open(str(source), metadata_errors="ignore") as container:
                extras = describe_extras(container, main_video(container).index)
        except (av.FFmpegError, OSError, StopIteration):
            extras = ()
    audio = [e for e in extras if e.endswith(("audio stream", "audio streams"))]
    notes = []
    if getattr(source, "has_audio", False) or audio:
        notes.append(f"audio not written: {output} holds no audio")
    others = [e for e in extras if e not in audio]
    if others:
        notes.append(f"not written: {', '.join(others)}: {output} holds frames only")
    return notes


class StreamCopier:
    """Copies what an input holds besides its main video into an output container.

    Create it after the output's video stream and before anything is muxed (the header is
    written with the first packet); ``copy_until(seconds)`` as frames are written, then
    ``copy_until(None)`` and ``close()``.

    Args:
        source: the input file.
        output: the output container (PyAV, opened for writing).
        video_out: the output's video stream, given the input video's tags.

    Attributes:
        notes: what the output container could not hold (one sentence naming each stream),
            and what was converted to fit it; empty when everything was kept as it was.
            Tracks the container drops for holding no packets are named once all is copied.
    """

    def __init__(self, source: Path, output, video_out):
        import av

        try:
            self._input = av.open(str(source), metadata_errors="ignore")
        except (av.FFmpegError, OSError) as error:
            raise SourceError(f"cannot read the streams of {source} ({error})") from error
        self._source, self._output = source, output
        self._format = output.format.name.split(",")[0]
        self._shown = _SHOWN_FORMATS.get(self._format, self._format.upper())
        self._dropped: list[str] = []
        self._converted: list[str] = []
        self._routes: dict = {}  # input stream index -> _Route
        try:
            video_index = main_video(self._input).index
            self._copy_tags(video_index, video_out)
            for stream in self._input.streams:
                if stream.index != video_index:
                    self._add(stream)
        except BaseException:
            self._input.close()
            raise
        self.notes = self._notes()
        copied = [self._input.streams[i] for i in self._routes]
        self._packets = self._input.demux(*copied) if copied else None
        self._pending = None

    # -- set up ------------------------------------------------------------------------------

    def _copy_tags(self, video_index: int, video_out) -> None:
        """Container metadata and chapters; the main video's tags, disposition, timecode."""
        out = self._output
        for key, value in self._input.metadata.items():
            if key.lower() not in _CONTAINER_TAGS_SKIPPED:
                out.metadata[key] = value
        chapters = self._input.chapters()
        if chapters:
            out.set_chapters(chapters)
        video = self._input.streams[video_index]
        for key, value in video.metadata.items():
            # mkvmerge's statistics (BPS, NUMBER_OF_FRAMES, ...) describe the old encoding
            if key.lower() not in _VIDEO_TAGS_SKIPPED and not key.startswith("_STATISTICS"):
                video_out.metadata[key] = value
        video_out.disposition = video.disposition
        timecode = self._timecode(video)
        if timecode:  # MP4 / MOV: a tmcd track; Matroska: a tag of the video track
            video_out.metadata["timecode"] = timecode

    def _timecode(self, video) -> str | None:
        # MOV/MP4 keep it in a tmcd data track, Matroska in a tag, DV/MXF in the container
        for tags in (video.metadata, *(s.metadata for s in self._input.streams.data),
                     self._input.metadata):
            for key, value in tags.items():
                if key.lower() == "timecode":
                    return value
        return None

    def _add(self, stream) -> None:
        kind = stream.type
        if kind == "attachment":
            self._attach(stream)
        elif kind == "data" and _is_timecode(stream):
            pass  # carried by the video stream's timecode tag
        elif stream.discard == _DISCARD_ALL:
            pass  # what the demuxer reads as something else: MP4's chapter text track
        elif _is_cover(stream) and self._format in ATTACHMENT_FORMATS:
            self._attach_cover(stream)  # Matroska keeps covers as attachments
        elif _is_cover(stream) and self._format not in COVER_FORMATS:
            self._drop(stream, f"a cover picture ({self._shown} drops it; write .mp4 "
                               f"or .mkv to keep it)")
        elif kind == "video" and not _is_cover(stream):
            self._drop(stream, "a second video stream (only the first is upscaled)")
        elif kind in ("audio", "subtitle", "data", "video"):
            route = self._template(stream)
            if route is None and kind == "audio":
                route = self._to_aac(stream)
            elif route is None and kind == "subtitle" and _is_text(stream):
                route = self._to_text(stream)
            if route is None:
                self._drop(stream, f"its {_codec(stream)} {_kind(stream)} cannot go into "
                                   f"{self._shown}")
                return
            _tag(stream, route.out)
            self._routes[stream.index] = route
        else:
            self._drop(stream, f"a {kind} stream")

    def _template(self, stream) -> _Route | None:
        if not _muxable(stream, self._output.format.name):
            return None
        return _Route(self._output.add_stream_from_template(stream))

    def _to_aac(self, stream) -> _Route:
        import av

        layout = _aac_layout(stream.layout)
        out = self._output.add_stream("aac", rate=stream.sample_rate)
        out.layout = layout
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=stream.sample_rate)
        self._converted.append(f"{_codec(stream)} audio to AAC")
        return _Route(out, resampler=resampler)

    def _to_text(self, stream) -> _Route | None:
        """A text subtitle stream converted to the container's own text codec."""
        codec = TEXT_SUBTITLE_CODECS.get(self._format)
        if codec is None:
            return None
        decoder = stream.codec_context
        decoder.open()  # its ASS header (styles) is what the encoder starts from
        out = self._output.add_stream(codec)
        out.codec_context.subtitle_header = decoder.subtitle_header
        out.time_base = out.codec_context.time_base = stream.time_base
        self._converted.append(f"{_codec(stream)} subtitles to {codec}")
        return _Route(out, decoder=decoder)

    def _attach(self, stream) -> None:
        name = stream.metadata.get("filename") or getattr(stream, "name", None) or "attachment"
        if self._format not in ATTACHMENT_FORMATS:
            self._drop(stream, f"attachment {name} ({self._shown} holds no "
                               f"attachments; write .mkv to keep it)")
            return
        mimetype = stream.metadata.get("mimetype") or getattr(stream, "mimetype", None)
        self._output.add_attachment(name, mimetype or "application/octet-stream",
                                    bytes(stream.data))

    def _attach_cover(self, stream) -> None:
        import av

        # the demuxer hands a cover out as the first packet of its stream: read apart, so
        # that the copy's own reading starts from the beginning
        with av.open(str(self._source), metadata_errors="ignore") as again:
            picture = next((p for p in again.demux(again.streams[stream.index]) if p.size),
                           None)
        if picture is None:
            self._drop(stream, "a cover picture without data")
            return
        ext, mimetype = _IMAGE_TYPES.get(_codec(stream), ("bin", "application/octet-stream"))
        name = stream.metadata.get("filename") or f"cover.{ext}"
        self._output.add_attachment(name, stream.metadata.get("mimetype") or mimetype,
                                    bytes(picture))

    def _drop(self, stream, why: str) -> None:
        self._dropped.append(_about(stream, why))

    def _notes(self) -> list[str]:
        notes = []
        if self._dropped:
            notes.append(self._not_kept(self._dropped))
        if self._converted:
            notes.append("converted for the output container: " + ", ".join(self._converted))
        return notes

    def _not_kept(self, dropped: list[str]) -> str:
        return f"not kept in {self._shown}: " + "; ".join(dropped)

    def _note_empty_tracks(self) -> None:
        """Name the copied streams that held no packet, where the muxer writes no such
        track (known only once the input is read to its end)."""
        if self._format not in EMPTY_TRACK_DROPPING_FORMATS:
            return
        streams = [self._input.streams[i] for i, route in self._routes.items()
                   if route.packets == 0]
        empty = [_about(stream, f"its {stream.type} track has no packets ({self._shown} "
                                f"writes no empty track; .mkv keeps it)")
                 for stream in streams]
        if empty:
            self.notes.append(self._not_kept(empty))

    # -- copying -----------------------------------------------------------------------------

    def copy_until(self, seconds: float | None) -> None:
        """Write the copied streams' packets up to ``seconds`` (None: all the rest)."""
        import av

        while self._packets is not None:
            if self._pending is None:
                try:
                    self._pending = next(self._packets, None)
                except (av.FFmpegError, OSError) as error:
                    raise SourceError(f"the streams of {self._source} cannot be read "
                                      f"({error}): the file is damaged or truncated") from error
                if self._pending is None:
                    self._packets = None
                    self._flush_encoders()
                    self._note_empty_tracks()
                    return
            packet = self._pending
            if packet.size == 0 or (packet.pts is None and packet.dts is None
                                    and not _is_cover(packet.stream)):
                self._pending = None  # demuxer flush markers, untimed data
                continue
            if packet.dts is None:
                packet.dts = packet.pts
            stamp = packet.pts if packet.pts is not None else packet.dts
            if (seconds is not None and stamp is not None
                    and float(stamp * packet.time_base) > seconds):
                return
            self._pending = None
            self._routes[packet.stream.index].send(packet, self._output)

    def _flush_encoders(self) -> None:
        for route in self._routes.values():
            route.flush(self._output)

    def close(self) -> None:
        self._input.close()


class _Route:
    """Where one input stream's packets go: remuxed, or decoded and encoded again."""

    def __init__(self, out, *, resampler=None, decoder=None):
        self.out, self.resampler, self.decoder = out, resampler, decoder
        self.packets = 0  # sent so far

    def send(self, packet, output) -> None:
        self.packets += 1
        if self.resampler is not None:  # audio to AAC
            for frame in packet.decode():
                for chunk in self.resampler.resample(frame):
                    output.mux(self.out.encode(chunk))
        elif self.decoder is not None:  # text subtitles to the container's own format
            subtitles = self.decoder.decode2(packet)
            if subtitles is None or len(subtitles) == 0:
                return  # mov_text's empty "clear" samples: the next cue's start ends it
            text = self.out.codec_context.encode_subtitle(subtitles)
            text.stream = self.out
            text.pts = text.dts = packet.pts
            text.duration, text.time_base = packet.duration, packet.time_base
            output.mux(text)
        else:
            packet.stream = self.out
            output.mux(packet)

    def flush(self, output) -> None:
        if self.resampler is not None:
            for chunk in self.resampler.resample(None):
                output.mux(self.out.encode(chunk))
            output.mux(self.out.encode(None))


def _about(stream, why: str) -> str:
    """``stream 2 (fre): why``: one stream an output does not keep, for a note."""
    language = stream.metadata.get("language")
    where = f"stream {stream.index}" + (f" ({language})" if language not in (None, "und")
                                        else "")
    return f"{where}: {why}"


def _muxable(stream, format_name: str) -> bool:
    """Whether a container takes a copy of ``stream``: some refuse a codec only when their
    header is written, which would lose the whole output, so a header is tried in memory."""
    import io

    import av

    try:
        with av.open(io.BytesIO(), "w", format=format_name.split(",")[0]) as trial:
            trial.add_stream_from_template(stream)
            trial.start_encoding()
    except (av.FFmpegError, ValueError, NotImplementedError):
        return False
    return True


def _tag(stream, out) -> None:
    """A stream's metadata (language, title, ...) and disposition onto its copy."""
    for key, value in stream.metadata.items():
        if key.lower() == "duration":  # matroska's per-track length: the muxer writes its own
            continue
        if key == "name" and "title" not in stream.metadata:
            key = "title"  # MP4's track name, written back from "title" by every muxer
        out.metadata[key] = value
    out.disposition = stream.disposition


def _is_cover(stream) -> bool:
    import av

    return stream.type == "video" and bool(
        stream.disposition & av.stream.Disposition.attached_pic)


def _is_timecode(stream) -> bool:
    return "timecode" in {key.lower() for key in stream.metadata} or _codec(stream) == "tmcd"


def _is_text(stream) -> bool:
    import av

    codec = stream.codec_context.codec if stream.codec_context else None
    return codec is not None and bool(codec.properties & av.codec.codec.Properties.TEXT_SUB.value)


def _codec(stream) -> str:
    context = stream.codec_context
    return getattr(context, "name", None) or getattr(stream, "name", None) or "unknown"


def _kind(stream) -> str:
    return {"subtitle": "subtitles", "data": "data track"}.get(stream.type, stream.type)


def _aac_layout(layout) -> str:
    # a layout without channel order (e.g. PCM in matroska: "1 channels") is refused by the
    # AAC encoder: name the usual layout for that many channels instead
    if not layout.name.endswith("channels"):
        return layout.name
    usual = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
    return usual.get(len(layout.channels), "stereo")
