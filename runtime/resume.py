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

Before any work the folder is checked: it must be a folder of this user (not a symlink, whose
segments would land elsewhere), its manifest of the expected form, and each segment as it was
finished (its size and SHA-256, recorded then; or, from an older manifest without them, its
frame count and timestamps as decoded). A damaged segment is dropped and computed again, with a
note. A run holds an exclusive lock on the folder (``lock``, with its process id) from start to
end, so a second run resuming into the same output is refused at once, naming the first.

When every window is finished, the segments' packets are joined into the output without being
encoded again: each segment is its own stream, so it starts with a keyframe; timestamps are the
input's, so they run on across segments; the input's audio is copied in over the whole output.
The output appears atomically and the work folder is removed. With a lossless codec (FFV1,
PNG) the output's frames and timestamps equal those of a run without ``--resume``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hirn.core.errors import ResumeError, SinkError
from hirn.core.files import atomic_write_text, natural_key
from hirn.export.manifest import sha256_of
from hirn.runtime.progress import note
from hirn.runtime.streams import StreamCopier
from hirn.runtime.video import FrameSink, FrameSource, open_sink
from hirn.runtime.video_writer import VIDEO_FORMATS, close_quietly, make_temp
from hirn.runtime.windows import Window

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go on without the lock
    fcntl = None

if TYPE_CHECKING:
    from hirn.runtime.backends.base import BackendConfig
    from hirn.runtime.pipeline import RunConfig

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = "lock"
VERSION = 1
HEAD_BYTES = 1 << 20  # the input's first MiB is hashed: a file rewritten in place is caught
# RunConfig fields that do not change the output's frames (so may differ when resuming);
# fit_batch only says whether --batch-size was given, and the batch size leaves frames as they are
_FREE_OPTIONS = ("overwrite", "quiet", "strict", "resume", "fit_batch")
# a manifest's segment entries: the JSON type of each field (size and sha256 are absent from
# the entries of older manifests)
_ENTRY_FIELDS = {"window": int, "start": int, "stop": int, "file": str, "notes": list}
_ENTRY_CHECKS = {"size": int, "sha256": str}


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
    return {k: v for k, v in asdict(config).items() if k not in _FREE_OPTIONS}


class Segments:
    """Stands in for the output's FrameSink in :func:`~hirn.runtime.pipeline.upscale`: frames
    go into one segment per window; ``close()`` joins them into the output.

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
        _make_folder(self.folder)
        self._lock = _lock(self.folder, self.path)
        try:
            self._manifest = _open_manifest(self.folder, fingerprint, self.path)
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
            _note_damaged(done, f"this run's window {index} holds frames {window.keep_start}-"
                                f"{window.keep_stop - 1}")
            return False
        self._seen.add(index)
        return True

    def begin(self, index: int, window: Window) -> None:
        """The frames of window ``index`` are written next."""
        self._planned.append((index, window))

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

    def __enter__(self) -> Segments:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _record(self, index: int, window: Window, sink: FrameSink) -> None:
        size, digest = _digest(sink.path)  # what a later run checks the segment against
        entry = {"window": index, "start": window.keep_start, "stop": window.keep_stop,
                 "file": sink.path.name, "notes": list(sink.notes), "size": size,
                 "sha256": digest}
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
            elif "sha256" in entry:
                damage = _changed(self.folder / name, entry, not self._suffix)
            else:  # from an older manifest
                damage, after = _decoded(self.folder / name, entry, not self._suffix, after)
            if damage is None:
                intact[entry["window"]] = entry
                continue
            _note_damaged(entry, damage)
            _remove(self.folder / name)
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


def _make_folder(folder: Path) -> None:
    """Make the work folder, or check that the one there may be taken up: a folder of this
    user, not a symlink (whose segments would be written, and left, where it points)."""
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass  # checked below
    except OSError as error:
        raise SinkError(f"cannot make the work folder {folder} ({error.strerror}): choose "
                        f"an output in a folder you may write to") from error
    found = os.lstat(folder)
    if stat.S_ISLNK(found.st_mode):
        raise ResumeError(f"{folder} is a symlink, not hirn-run's resume folder (segments "
                          f"would be written where it points): delete the link")
    if not stat.S_ISDIR(found.st_mode):
        kind = "a file" if stat.S_ISREG(found.st_mode) else "not a folder"
        raise ResumeError(f"{folder} is {kind}, not hirn-run's resume folder: move or "
                          f"delete it")
    if hasattr(os, "getuid") and found.st_uid != os.getuid():
        raise ResumeError(f"{folder} belongs to another user (uid {found.st_uid}): choose "
                          f"another output, or have its owner delete the folder")


def _lock(folder: Path, output: Path) -> int | None:
    """An exclusive lock on the work folder, held by the returned file descriptor (so freed
    however the process ends), in a file holding this process's id; ResumeError naming the
    holder if another run has it. None where there is no flock (Windows), or it fails."""
    if fcntl is None:
        return None
    path = folder / LOCK
    try:  # never through a symlink: the lock file is written
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        raise ResumeError(f"cannot open the lock file {path} ({error.strerror}): delete "
                          f"{folder} to start over") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ResumeError(f"another hirn-run (pid {holder if holder.isdigit() else 'unknown'})"
                          f" is resuming into {output}: wait for it or stop it") from None
    except OSError as error:  # a file system without locks (some network shares)
        os.close(fd)
        note(f"cannot lock {path} ({error.strerror}): make sure no other hirn-run resumes "
             f"into {output} meanwhile")
        return None
    if not _is_open_file(fd, path):  # a run finishing removed the folder meanwhile
        os.close(fd)
        raise ResumeError(f"another hirn-run has just finished {output}: run the command "
                          f"again if it is still wanted")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _is_open_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _open_manifest(folder: Path, fingerprint: dict, output: Path) -> dict:
    """The manifest of ``folder`` if it was made for ``fingerprint``; a new one if there is
    none; ResumeError naming what is wrong with it, or what changed, otherwise."""
    path = folder / MANIFEST
    if not path.exists():
        manifest = {"version": VERSION, **fingerprint, "segments": []}
        atomic_write_text(path, json.dumps(manifest, indent=1))
        return manifest
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ResumeError(f"{path} cannot be read ({error}): delete {folder} to start "
                          f"over") from error
    version = manifest.get("version") if isinstance(manifest, dict) else None
    problem = (_malformed(manifest, fingerprint) if version == VERSION or version is None
               else None)
    if problem:
        raise ResumeError(f"{path} is not a manifest of hirn-run --resume ({problem}): delete "
                          f"{folder} to start over")
    changes = _differences(_comparable(manifest, fingerprint), fingerprint) \
        if version == VERSION else \
        [f"the manifest's version {version!r} (this hirn-run writes {VERSION})"]
    if changes:
        raise ResumeError(
            f"cannot resume {output.name}: {folder} holds the finished windows of a run "
            f"with another input or other options ({'; '.join(changes)}); run the earlier "
            f"command to continue it, or delete {folder} to start over with these")
    return manifest


def _malformed(manifest, fingerprint: dict) -> str | None:
    """What in ``manifest`` is not of the form this hirn-run writes (None: all of it is)."""
    if not isinstance(manifest, dict):
        return f"it holds {_json_kind(manifest)}, not an object"
    missing = [key for key in ("version", *fingerprint, "segments") if key not in manifest]
    if missing:
        return f"it lacks {', '.join(map(repr, missing))}"
    for key, kind in (("options", dict), ("segments", list)):
        if not isinstance(manifest[key], kind):
            return f"{key!r} is {_json_kind(manifest[key])}, not {_json_kind(kind())}"
    windows = set()
    for n, entry in enumerate(manifest["segments"]):
        problem = _malformed_entry(entry)
        if problem is None and entry["window"] in windows:
            problem = f"records window {entry['window']} again"
        if problem:
            return f"segments[{n}] {problem}"
        windows.add(entry["window"])
    return None


def _malformed_entry(entry) -> str | None:
    if not isinstance(entry, dict):
        return f"is {_json_kind(entry)}, not an object"
    for field, kind in {**_ENTRY_FIELDS, **_ENTRY_CHECKS}.items():
        if field not in entry:
            if field in _ENTRY_FIELDS:
                return f"lacks {field!r}"
        elif not isinstance(entry[field], kind) or isinstance(entry[field], bool):
            return f"has {_json_kind(entry[field])} for {field!r}, not {_json_kind(kind())}"
    if ("size" in entry) != ("sha256" in entry):
        return "has one of 'size' and 'sha256' without the other"
    if not 0 <= entry["start"] < entry["stop"] or entry["window"] < 0:
        return f"holds window {entry['window']}, frames {entry['start']}-{entry['stop'] - 1}"
    if not all(isinstance(text, str) for text in entry["notes"]):
        return "has notes that are not strings"
    return None


def _json_kind(value) -> str:
    """The JSON name of a value's type, with its article."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
             int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _comparable(manifest: dict, fingerprint: dict) -> dict:
    """The manifest's part that must equal this run's fingerprint (options that may change
    left out: an older hirn-run recorded some of them)."""
    earlier = {key: manifest[key] for key in fingerprint}
    earlier["options"] = {k: v for k, v in earlier["options"].items()
                          if k not in _FREE_OPTIONS}
    return earlier


def _note_damaged(entry: dict, damage: str) -> None:
    note(f"segment {entry['window']} (frames {entry['start']}-{entry['stop'] - 1}) is "
         f"damaged: computing it again ({damage})")


def _digest(path: Path) -> tuple[int, str]:
    """Bytes and SHA-256 of a segment: a video file's, or a PNG folder's (of its names and
    files; an entry that is not a plain file counts, so it changes the hash)."""
    if not path.is_dir():
        return path.stat().st_size, sha256_of(path)
    digest, size = hashlib.sha256(), 0
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            size += entry.stat(follow_symlinks=False).st_size
            digest.update(f"{entry.name}\0{sha256_of(entry.path)}\n".encode())
        else:
            digest.update(f"{entry.name}\0-\n".encode())
    return size, digest.hexdigest()


def _misplaced(path: Path, folder: bool) -> str | None:
    """Why ``path`` is not a segment's file (or PNG folder) at all; None if it is one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return f"{path.name} is missing"
    if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
        return f"{path.name} is not a {'folder' if folder else 'regular file'}"
    return None


def _changed(path: Path, entry: dict, folder: bool) -> str | None:
    """How a segment differs from the size and hash recorded when it was finished (None: it
    is as it was)."""
    damage = _misplaced(path, folder)
    if damage:
        return damage
    try:
        size, digest = _digest(path)
    except OSError as error:
        return f"{path.name} cannot be read ({error.strerror})"
    if size != entry["size"]:
        return f"{path.name} holds {size} bytes, {entry['size']} when it was finished"
    if digest != entry["sha256"]:
        return f"the SHA-256 of {path.name} is not the one recorded when it was finished"
    return None


def _decoded(path: Path, entry: dict, folder: bool, after: float | None
             ) -> tuple[str | None, float | None]:
    """How a segment recorded by an older hirn-run (without size or hash) fails to hold its
    frames, or (a video) to start after ``after``, the last timestamp of the segment before
    it (None: it does neither); and its own last timestamp (``after`` if damaged)."""
    damage = _misplaced(path, folder)
    if damage:
        return damage, after
    frames = entry["stop"] - entry["start"]
    if folder:  # PNGs carry no timestamps
        count = sum(1 for p in path.iterdir() if p.suffix == ".png" and p.is_file())
        return (None if count == frames else f"{path.name} holds {count} PNGs, not {frames}",
                after)
    import av

    try:
        with av.open(str(path)) as container:
            times = [frame.time for frame in container.decode(video=0)]
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:
        return f"{path.name} cannot be decoded ({getattr(error, 'strerror', None) or error})", \
            after
    if len(times) != frames:
        return f"{path.name} holds {len(times)} frames, not {frames}", after
    if None in times or (after is not None and times[0] <= after):
        return f"{path.name} does not start after the segment before it", after
    return None, max(times)


def _remove(path: Path) -> None:
    """Remove a damaged segment (a file, a link or a folder), if it is there (one that
    cannot be removed is replaced when the window is written again)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _differences(before, after, where: str = "") -> list[str]:
    """``name: old -> new`` for each leaf that differs between two JSON-like values."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in list(before) + [k for k in after if k not in before]:
            found += _differences(before.get(key), after.get(key),
                                  f"{where}.{key}" if where else key)
        return found
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


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
