"""The work folder of ``hirn-run --resume``, checked before any work is done.

It is made, or taken up only if it is a folder of this user (a symlink would have segments
written, and left, where it points); locked for the whole run (``flock`` on ``lock``, which
holds the process id: a second run is refused at once, naming the first; the lock goes with
the process however it ends); its ``manifest.json`` read, checked for the form this hirn-run
writes (what is wrong is named) and compared with this run; each recorded segment checked
against its record: size and SHA-256, or, in an older manifest without them, frame count and
timestamps as decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from hirn.core.errors import ResumeError, SinkError
from hirn.core.files import atomic_write_text
from hirn.export.manifest import sha256_of
from hirn.runtime.progress import note

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go on without the lock
    fcntl = None

MANIFEST = "manifest.json"
LOCK = "lock"
VERSION = 1
# RunConfig fields that do not change the output's frames (so may differ when resuming);
# fit_batch only says whether --batch-size was given, and the batch size leaves frames as they are
FREE_OPTIONS = ("overwrite", "quiet", "strict", "resume", "fit_batch")
# a manifest's segment entries: the JSON type of each field (size and sha256 are absent from
# the entries of older manifests)
_ENTRY_FIELDS = {"window": int, "start": int, "stop": int, "file": str, "notes": list}
_ENTRY_CHECKS = {"size": int, "sha256": str}


def make_folder(folder: Path) -> None:
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


def lock_folder(folder: Path, output: Path) -> int | None:
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


def open_manifest(folder: Path, fingerprint: dict, output: Path) -> dict:
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
                          if k not in FREE_OPTIONS}
    return earlier


def note_damaged(entry: dict, damage: str) -> None:
    """A note naming a damaged segment (its window is computed again) and its damage."""
    note(f"segment {entry['window']} (frames {entry['start']}-{entry['stop'] - 1}) is "
         f"damaged: computing it again ({damage})")


def segment_digest(path: Path) -> tuple[int, str]:
    """Bytes and SHA-256 of a segment: a video file's, or a PNG folder's (of its names and
    files; an entry that is not a plain file counts, so it changes the hash)."""
    if not path.is_dir():
        return path.stat().st_size, sha256_of(path)
    hasher, size = hashlib.sha256(), 0
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            size += entry.stat(follow_symlinks=False).st_size
            hasher.update(f"{entry.name}\0{sha256_of(entry.path)}\n".encode())
        else:
            hasher.update(f"{entry.name}\0-\n".encode())
    return size, hasher.hexdigest()


def segment_damage(path: Path, entry: dict, folder: bool, after: float | None
                   ) -> tuple[str | None, float | None]:
    """How a recorded segment (a file, or a ``folder`` of PNGs) differs from its record (None:
    it is as it was finished), and the last timestamp of the segments decoded so far (those of
    an older manifest, which must follow ``after``)."""
    if "sha256" in entry:
        return _changed(path, entry, folder), after
    return _decoded(path, entry, folder, after)


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
        size, sha256 = segment_digest(path)
    except OSError as error:
        return f"{path.name} cannot be read ({error.strerror})"
    if size != entry["size"]:
        return f"{path.name} holds {size} bytes, {entry['size']} when it was finished"
    if sha256 != entry["sha256"]:
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
        reason = getattr(error, "strerror", None) or error
        return f"{path.name} cannot be decoded ({reason})", after
    if len(times) != frames:
        return f"{path.name} holds {len(times)} frames, not {frames}", after
    if None in times or (after is not None and times[0] <= after):
        return f"{path.name} does not start after the segment before it", after
    return None, max(times)


def remove_segment(path: Path) -> None:
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
