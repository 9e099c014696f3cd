"""``--resume``: a long video kept as one encoded segment per finished window, joined at the end.

The work folder sits hidden beside the output (``.NAME.resume/``). Its ``manifest.json`` names
the input (path, size, modification time, a hash of its first MiB), every option that changes
the output (window, overlap, codec, crf, ..., and the model: backend, precision, device, a hash
of the weights) and the finished windows. Each window's frames are encoded as a segment of
their own (``000003.mkv``, or a folder ``000003/`` of PNGs), written atomically and recorded in
the manifest only once complete, so a run killed at any point (SIGKILL included) leaves only
finished segments on record.

Running the same command again continues from the first unfinished window: finished windows
are neither computed nor encoded, though their frames are still decoded (the next window reads
its context from them). A run whose input or options differ from the manifest's is refused,
naming what changed (continuing would join segments of two different outputs).

Before any work the folder is checked and locked (``resume_folder.py``): a folder that is not
this user's, a second run into the same output, or a manifest not of the form written here is
refused; a segment that differs from its record (its size and SHA-256, recorded when it was
finished) is named in a note and computed again.

When every window is finished, the segments' packets are joined into the output without being
encoded again: each segment is its own stream, so it starts with a keyframe; timestamps are the
input's, so they run on across segments; the input's audio is copied in over the whole output.
The output appears atomically and the work folder is removed. With a lossless codec (FFV1,
PNG) the output's frames and timestamps equal those of a run without ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hirn.core.errors import ResumeError
from hirn.core.files import atomic_write_text, natural_key
from hirn.media.streams import StreamCopier
from hirn.media.video import FrameSink, FrameSource, open_sink
from hirn.media.video_writer import VIDEO_FORMATS, FrameSinkBase, close_quietly, make_temp
from hirn.runtime.progress import note
from hirn.runtime.resume_folder import (
    FREE_OPTIONS,
    MANIFEST,
    lock_folder,
    make_folder,
    note_damaged,
    open_manifest,
    remove_segment,
    segment_damage,
    segment_digest,
)
from hirn.runtime.windows import Window

if TYPE_CHECKING:
    from hirn.runtime.backends.base import BackendConfig
    from hirn.runtime.pipeline import RunConfig

logger = logging.getLogger(__name__)

HEAD_BYTES = 1 << 20  # the input's first MiB is hashed: a file rewritten in place is caught


def work_folder(output: str | os.PathLike) -> Path:
    """The hidden work folder of ``output``: ``.NAME.resume`` beside it."""
    output = Path(output)
    return output.parent / f".{output.name}.resume"


def file_identity(path: Path) -> dict:
    """Path, size, modification time and a hash of the first MiB of a file; of a folder
    (frames, graphs), a hash of each file's name, size and modification time (reading the
    heads of a hundred thousand frames would take longer than some windows)."""
    path = Path(path)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file()), key=natural_key)
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"path": str(path.resolve()), "files": len(files), "sha256": digest.hexdigest()}
    stat = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256_head": head}


def model_identity(backend: BackendConfig) -> dict:
    """What decides the model's output: backend, device kind, precision, compilation, and the
    weights given (a file's identity; a folder's files)."""
    weights = backend.weights
    return {"backend": backend.backend, "device": backend.device.split(":")[0],
            "precision": backend.precision, "compile": backend.compile_steps,
            "cuda_graphs": backend.cuda_graphs,
            "weights": None if weights is None else file_identity(Path(weights))}


def options_identity(config: RunConfig) -> dict:
    """The run options that change the output (all of RunConfig but a few)."""
    return {k: v for k, v in asdict(config).items() if k not in FREE_OPTIONS}


class Segments(FrameSinkBase):
    """The sink :func:`~hirn.runtime.pipeline.upscale` writes into in place of the output's:
    frames go into one segment per window; ``close()`` joins them into the output.

    ``finished(index, window)`` says whether an earlier run finished that window (then the
    pipeline skips it); ``begin(index, window)`` announces the frames of a window to be
    written next (called before they are queued; ``write`` runs in the encoder thread).

    Attributes:
        path: the output. folder: the work folder. frames_written: frames encoded by this run.
        notes: what the output could not carry (from every segment, and the join).
        first_unfinished: the window this run starts at (0 for a fresh start).
    """

    def __init__(self, source: FrameSource, output: str | os.PathLike, config: RunConfig,
                 model: dict | None = None):
        if "-" in (str(source.path), str(output)):  # a YUV4MPEG2 pipe cannot be read again
            raise ResumeError("--resume needs an input file and an output path, not a pipe")
        self.path = Path(output)
        self.folder = work_folder(self.path)
        self._source, self._config = source, config
        # the output's own checks (codec, crf, an existing output, the input as output) before
        # any work: opening its sink makes them (and says what it cannot hold); then dropped
        from hirn.runtime.pipeline import open_output  # (pipeline imports this module)

        probe = open_output(source, self.path, config)
        probe.abort()
        self.notes: list[str] = list(probe.notes)
        self.dtype = probe.dtype  # the pipeline rounds to 8 or 16 bits as the output keeps
        # segments: the output's format exactly, video only
        self._sink_options = dict(
            width=probe.width, height=probe.height, fps=probe.fps, time_base=probe.time_base,
            codec=probe.codec, pix_fmt=probe.pix_fmt, crf=config.crf,
            sample_aspect_ratio=source.sample_aspect_ratio, colour=source.colour,
            sampling=source.sampling)
        self._suffix = self.path.suffix.lower() if self.path.suffix.lower() in VIDEO_FORMATS \
            else ""
        fingerprint = {"input": file_identity(Path(source.path)),
                       "options": options_identity(config), "model": model,
                       "output": self.path.name}
        fingerprint = json.loads(json.dumps(fingerprint))  # as read back (tuples as lists)
        make_folder(self.folder)
        self._lock = lock_folder(self.folder, self.path)
        try:
            self._manifest = open_manifest(self.folder, fingerprint, self.path)
            self._done = self._intact(self._manifest["segments"])
            if len(self._done) < len(self._manifest["segments"]):
                self._save()  # the damaged segments off the record
        except BaseException:
            self._unlock()
            raise
        self._seen: set[int] = set()  # windows of this run's plan that are on record
        self._planned: deque = deque()
        self._current: tuple[int, Window, FrameSink] | None = None
        self._closed = False
        self.frames_written = 0
        self.first_unfinished = next(i for i in range(len(self._done) + 1) if i not in self._done)

    # -- what the pipeline calls ---------------------------------------------------------------

    def finished(self, index: int, window: Window) -> bool:
        """Whether window ``index`` (as ``window``) was finished by an earlier run."""
        done = self._done.get(index)
        if done is None:
            return False
        if (done["start"], done["stop"]) != (window.keep_start, window.keep_stop):
            # the fingerprint makes this impossible unless the manifest was edited or the
            # windowing itself changed: computed again, its record and file replaced then
            note_damaged(done, f"this run's window {index} holds frames {window.keep_start}-"
                                f"{window.keep_stop - 1}")
            return False
        self._seen.add(index)
        return True

    def begin(self, index: int, window: Window) -> None:
        """The frames of window ``index`` are written next."""
        self._planned.append((index, window))

    def needs_window(self, index: int, window: Window) -> bool:
        """The sink interface's question before each window: False for a window an earlier
        run finished (its segment is kept), else True, its frames written next."""
        if self.finished(index, window):
            return False
        self.begin(index, window)
        return True

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Add one frame to the segment of the current window (closed once it is full)."""
        if self._current is None:
            index, window = self._planned.popleft()
            segment = self.folder / f"{index:06d}{self._suffix}"
            sink = open_sink(segment, **self._sink_options, overwrite=True)
            self._current = (index, window, sink)
        index, window, sink = self._current
        sink.write(image, pts)
        self.frames_written += 1
        if sink.frames_written == window.keep_stop - window.keep_start:
            sink.close()  # synced and renamed into place: complete on disk
            self._record(index, window, sink)
            self._current = None

    # -- the output ------------------------------------------------------------------------------

    def close(self) -> None:
        """Join every segment into the output, then remove the work folder."""
        if self._closed:
            return
        self._closed = True
        try:
            self._join()
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            self._unlock()  # after the removal: no other run takes the folder up meanwhile

    def _join(self) -> None:
        if self._current is not None:
            raise RuntimeError(f"window {self._current[0]} was not written whole")
        # the windows of this run's plan only (a record of a window past the end is left out)
        segments = [self._done[i] for i in sorted(self._done) if i in self._seen]
        frames = 0
        for segment in segments:  # they must tile the video from frame 0
            if segment["start"] != frames:
                raise ResumeError(f"{self.folder} lacks frames {frames}-{segment['start'] - 1}:"
                                  f" delete it to start over")
            frames = segment["stop"]
        source = self._source
        copied = source.has_audio or getattr(source, "extras", None)  # as open_sink decides
        streams = source.path if copied and not Path(source.path).is_dir() else None
        files = [self.folder / s["file"] for s in segments]
        joined = _Joined(self.path, make_temp(self.path, not self._suffix), files, streams,
                         self._sink_options, self._config.overwrite)
        joined.close()
        for text in [t for s in segments for t in s["notes"]] + joined.notes:
            if text not in self.notes:
                self.notes.append(text)

    def abort(self) -> None:
        """Stop: the window being encoded is dropped, finished segments are kept."""
        self._closed = True
        try:
            if self._current is not None:
                self._current[2].abort()
                self._current = None
        finally:
            self._unlock()


    def _record(self, index: int, window: Window, sink: FrameSink) -> None:
        size, sha256 = segment_digest(sink.path)  # what a later run checks the segment against
        entry = {"window": index, "start": window.keep_start, "stop": window.keep_stop,
                 "file": sink.path.name, "notes": list(sink.notes), "size": size,
                 "sha256": sha256}
        self._done[index] = entry
        self._seen.add(index)
        self._save()
        logger.debug("window %d (frames %d-%d) kept in %s", index, window.keep_start,
                     window.keep_stop - 1, self.folder / sink.path.name)

    def _save(self) -> None:
        self._manifest["segments"] = sorted(self._done.values(), key=lambda s: s["window"])
        atomic_write_text(self.folder / MANIFEST, json.dumps(self._manifest, indent=1))

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # the lock goes with its file descriptor
            self._lock = None

    def _segment_name(self, index: int) -> str:
        return f"{index:06d}{self._suffix}"

    def _intact(self, entries: list[dict]) -> dict[int, dict]:
        """The recorded segments that are as they were finished, by window; each other one
        is named in a note, its file removed and its record dropped (computed again)."""
        intact, after = {}, None  # after: the last timestamp of the segments checked by decoding
        for entry in sorted(entries, key=lambda s: s["window"]):
            name = self._segment_name(entry["window"])
            if entry["file"] != name:
                damage = f"its file is {entry['file']!r}, not {name}"
            else:
                damage, after = segment_damage(self.folder / name, entry, not self._suffix,
                                               after)
            if damage is None:
                intact[entry["window"]] = entry
                continue
            note_damaged(entry, damage)
            remove_segment(self.folder / name)
        return intact


def open_segments(source: FrameSource, output: str | os.PathLike, config: RunConfig,
                  model: dict | None = None) -> Segments:
    """The segments of ``output`` (resumed where a work folder of the same run is found),
    with a note saying where this run continues."""
    segments = Segments(source, output, config, model)
    done = sorted(segments._done.values(), key=lambda s: s["window"])
    if done:
        k = segments.first_unfinished
        kept = sum(s["stop"] - s["start"] for s in done)
        windows = "window" if len(done) == 1 else "windows"
        note(f"resuming from {segments.folder.name}: {len(done)} finished {windows} "
             f"({kept} frames) kept from an earlier run; continuing from window {k} "
             f"(counted from 0)")
    return segments


def _decode_time(packet, last: int | None) -> int | None:
    """A packet's decode time, increasing across segments. Matroska keeps none: its demuxer
    leaves the first packets of a stream with reordered frames without one, and a muxer
    refuses those after the previous segment's (any increasing time up to the packet's
    presentation time decodes the same)."""
    dts = packet.dts
    if dts is None:
        return packet.pts if last is None else min(last + 1, packet.pts)
    if last is not None and dts <= last:
        return last + 1
    return dts


class _Joined(FrameSink):
    """The output made from finished segments: their packets remuxed (video files) or their
    PNGs linked in (folders); published atomically like any FrameSink. ``streams``: the
    input whose other streams (audio, subtitles, ...) are copied in, or None."""

    def __init__(self, path: Path, temp: Path, segments: list[Path], streams: str | None,
                 options: dict, overwrite: bool):
        super().__init__(path, temp, width=options["width"], height=options["height"],
                         fps=options["fps"], time_base=options["time_base"],
                         codec=options["codec"], overwrite=overwrite,
                         pix_fmt=options["pix_fmt"])
        self._segments, self._streams = segments, streams
        self._container = self._audio = None

    def _finish(self) -> None:
        if self._temp.is_dir():
            self._link_images()
        else:
            self._remux()

    def _link_images(self) -> None:
        count = 0
        for segment in self._segments:
            for image in sorted(segment.glob("*.png"), key=natural_key):
                target = self._temp / f"{count:06d}.png"
                try:
                    os.link(image, target)  # the segments stay whole until the output is out
                except OSError:
                    shutil.copyfile(image, target)
                count += 1
        self.frames_written = count

    def _remux(self) -> None:
        import av

        with av.open(str(self._segments[0])) as first:
            template = first.streams.video[0]
            extradata = template.codec_context.extradata
            self._container = av.open(str(self._temp), "w",
                                      format=VIDEO_FORMATS[self.path.suffix.lower()])
            stream = self._container.add_stream_from_template(template)
            # the segments' own time base: their timestamps are written as they are
            stream.time_base = template.time_base
            if template.sample_aspect_ratio:
                stream.sample_aspect_ratio = template.sample_aspect_ratio
        if self._streams is not None:
            self._audio = StreamCopier(Path(self._streams), self._container, stream)
            self.notes.extend(self._audio.notes)
        last_dts = None
        for path in self._segments:
            with av.open(str(path)) as segment:
                video = segment.streams.video[0]
                if video.codec_context.extradata != extradata:
                    raise ResumeError(f"{path.name} was encoded with other codec settings "
                                      f"than the first segment: delete {path.parent} to "
                                      f"start over")
                for packet in segment.demux(video):
                    if packet.size == 0:
                        continue  # the demuxer's end marker
                    packet.dts = _decode_time(packet, last_dts)
                    last_dts = packet.dts
                    packet.stream = stream
                    self._container.mux(packet)
                    self.frames_written += 1
                    if self._audio is not None and packet.pts is not None:
                        self._audio.copy_until(float(packet.pts * packet.time_base))
        if self._audio is not None:
            self._audio.copy_until(None)
            self._audio.close()
        self._container.close()
        self._container = None

    def _release(self) -> None:
        close_quietly(self._audio, self._container)
        self._audio = self._container = None
