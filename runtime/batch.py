"""Folders: an image sequence (one input) or a batch of videos, shared out under torchrun.

A folder that holds images is one input, a frame sequence; a folder that holds video files
(by their extension) is a batch: every video is upscaled into OUTDIR under the same name, in
the chosen codec's container. Each finished output gets a completion record beside it
(``.NAME.complete.json``: the input's size and the output's, written after the output was
synced and renamed into place); an output whose record matches is skipped, so an interrupted
batch resumes where it stopped. Any other file at an output's name (empty, truncated, from
elsewhere, or changed since) is upscaled again and replaced.

Under ``torchrun --nproc-per-node N`` (environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
each process takes the files ``i % WORLD_SIZE == RANK`` of the sorted list, and GPU
``LOCAL_RANK`` with ``--device cuda``; the processes never talk to each other.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hirn.core.errors import BatchError, HirnError, SinkError
from hirn.core.files import atomic_write_text, natural_key
from hirn.core.launch import ProcessLayout
from hirn.media.video_reader import IMAGE_SUFFIXES
from hirn.media.video_writer import VIDEO_FORMATS
from hirn.runtime.progress import note

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts",
                  ".m2ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv", ".y4m", ".mxf", ".vob")


@dataclass(frozen=True)
class Shard(ProcessLayout):
    """This process's share of a batch: files ``i % world_size == rank``
    (``Shard.from_env()``: the share torchrun gives it)."""

    def takes(self, index: int) -> bool:
        return index % self.world_size == self.rank

    @property
    def label(self) -> str:
        return f"[{self.rank + 1}/{self.world_size}] " if self.world_size > 1 else ""


def _files(folder: Path, suffixes: tuple[str, ...], hidden: bool = False) -> list[Path]:
    """The files of ``folder`` with these suffixes, in natural order: visible ones, or with
    ``hidden`` the hidden ones (names starting with a dot), which a batch skips."""
    return sorted((p for p in folder.iterdir() if p.is_file()
                   and p.name.startswith(".") == hidden and p.suffix.lower() in suffixes),
                  key=lambda p: natural_key(p.name))


def is_batch(folder: Path) -> bool:
    """Whether a folder is a batch of videos (True) or one image sequence (False)."""
    images, videos = _files(folder, IMAGE_SUFFIXES), _files(folder, VIDEO_SUFFIXES)
    if images and videos:
        raise BatchError(f"{folder} holds both images ({images[0].name}, ...) and videos "
                         f"({videos[0].name}, ...): put a frame sequence and videos in "
                         f"separate folders")
    if not images and not videos:
        raise BatchError(f"{folder} holds neither images nor videos (looked for "
                         f"{', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
    return bool(videos)


def output_name(video: Path, codec: str | None) -> str:
    """The output's name: the input's name in the codec's container (a folder for png)."""
    if codec == "png":
        return video.stem
    if codec == "ffv1":
        return video.stem + ".mkv"
    suffix = video.suffix.lower()
    return video.stem + (suffix if suffix in VIDEO_FORMATS else ".mp4")


def plan_batch(folder: Path, outdir: Path, codec: str | None) -> list[tuple[Path, Path]]:
    """(input, output) pairs of a batch folder, sorted by name; the same on every process."""
    if outdir.exists() and not outdir.is_dir():
        raise BatchError(f"{outdir} is a file: a batch writes into a folder (-o OUTDIR)")
    if outdir.exists() and os.path.samefile(outdir, folder):
        raise BatchError(f"the output folder {outdir} is the input folder: choose another "
                         f"(the inputs are never overwritten)")
    pairs = [(video, outdir / output_name(video, codec))
             for video in _files(folder, VIDEO_SUFFIXES)]
    seen: dict[Path, Path] = {}
    for video, output in pairs:
        if output in seen:
            raise BatchError(f"{seen[output].name} and {video.name} would both be written to "
                             f"{output}: rename one of them")
        seen[output] = video
    return pairs


def record_path(output: Path) -> Path:
    """Where the completion record of ``output`` is kept: a hidden file beside it."""
    return output.with_name(f".{output.name}.complete.json")


def _sizes(path: Path) -> dict[str, int]:
    """Bytes (and files, for a folder of PNGs) of a file or folder: what a truncated,
    emptied or replaced output would change."""
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    return {"bytes": path.stat().st_size}


def _record(video: Path, output: Path) -> dict:
    return {"input": video.name, "input_bytes": video.stat().st_size,
            "output": _sizes(output)}


def mark_complete(video: Path, output: Path) -> None:
    """Record that ``output`` was upscaled completely from ``video`` (call once the output
    is in place: sinks sync it before the rename)."""
    atomic_write_text(record_path(output), json.dumps(_record(video, output)) + "\n")


def is_complete(video: Path, output: Path) -> bool:
    """Whether ``output`` is this batch's complete output of ``video``: its record is there
    and still matches the input and the output (a 0-byte or truncated file does not)."""
    try:
        record = json.loads(record_path(output).read_text())
        return output.exists() and record == _record(video, output)
    except (OSError, ValueError):
        return False


@dataclass
class BatchReport:
    done: list[Path]
    skipped: list[Path]
    failed: list[tuple[Path, str]]

    def line(self, shard: Shard) -> str:
        return (f"{shard.label}batch: {len(self.done)} upscaled, {len(self.skipped)} skipped "
                f"(already complete), {len(self.failed)} failed")


def run_batch(folder: Path, outdir: Path, codec: str | None, overwrite: bool, shard: Shard,
              upscale_one: Callable[[Path, Path, bool], None]) -> BatchReport:
    """Upscale this process's share of ``folder`` with ``upscale_one(input, output,
    overwrite)``; ``overwrite`` is also true for an incomplete file at the output's name.

    A file that fails (a damaged video, say) is reported and the batch goes on; Ctrl-C stops
    it (outputs finished so far are kept, the one being written is dropped).
    """
    pairs = plan_batch(folder, outdir, codec)
    mine = [pair for index, pair in enumerate(pairs) if shard.takes(index)]
    report = BatchReport([], [], [])
    todo = []
    for video, output in mine:
        if overwrite or not output.exists():
            todo.append((video, output, overwrite))
        elif is_complete(video, output):
            report.skipped.append(video)
        else:
            note(f"{output} is not a complete output of {video.name} (empty, cut short or "
                 f"changed since it was written): it is upscaled again")
            todo.append((video, output, True))
    logger.info("%s%s: %d videos, %d for this process, %d already done", shard.label, folder,
                len(pairs), len(mine), len(report.skipped))
    hidden = _files(folder, VIDEO_SUFFIXES, hidden=True)
    if hidden and shard.rank == 0:
        note(f"not upscaled: {', '.join(p.name for p in hidden)} in {folder} (a batch skips "
             f"hidden files, whose names start with a dot: rename them to include them)")
    if todo:
        _make_folder(outdir)
    for video, output, replace in todo:
        try:
            upscale_one(video, output, replace)
        except HirnError as error:
            report.failed.append((video, str(error)))
            logger.warning("%sfailed: %s: %s", shard.label, video.name, error)
            continue
        _mark_complete_or_say(video, output)
        report.done.append(video)
    return report


def _make_folder(outdir: Path) -> None:
    """Create the output folder (and its parents); SinkError naming it where that fails."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        file = next((p for p in outdir.parents if p.is_file()), None)
        why = f"{file} is a file" if file is not None else error.strerror
        raise SinkError(f"cannot create the output folder {outdir} ({why}): choose a folder "
                        f"you may write to") from error


def _mark_complete_or_say(video: Path, output: Path) -> None:
    """Record a finished output; where the record cannot be written, the output stays (it
    is whole) and a note says that a rerun will upscale it again."""
    try:
        mark_complete(video, output)
    except OSError as error:
        note(f"{output} is complete, but its completion record cannot be written "
             f"({error.strerror}): a rerun will upscale {video.name} again")
