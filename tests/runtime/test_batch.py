"""Folders of videos: names, resuming, failures, and torchrun sharing the files out."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from support import assert_clean_failure, invoke, names

from hirn.core.errors import LaunchError
from hirn.media.video import open_source
from hirn.runtime import batch
from hirn.runtime.batch import (
    BatchError,
    Shard,
    is_batch,
    mark_complete,
    output_name,
    plan_batch,
    run_batch,
)
from hirn.runtime.cli import main

TORCHRUN_TIMEOUT_S = 300


def test_folders_of_images_are_one_input_and_folders_of_videos_a_batch(tmp_path, media):
    images = media.write_images(tmp_path / "frames", media.synthetic_frames(2))
    videos = tmp_path / "videos"
    videos.mkdir()
    media.write_video(videos / "a.mp4", media.synthetic_frames(2))
    (videos / "readme.txt").write_text("other files are ignored")
    assert not is_batch(images) and is_batch(videos)
    media.write_images(videos, media.synthetic_frames(1), names=["cover.jpg"])
    with pytest.raises(BatchError, match="both images .* and videos"):
        is_batch(videos)
    (tmp_path / "none").mkdir()
    with pytest.raises(BatchError, match="neither images nor videos"):
        is_batch(tmp_path / "none")


@pytest.mark.parametrize("name, codec, expected", [
    ("a.mp4", None, "a.mp4"), ("a.mov", "h265", "a.mov"), ("a.avi", None, "a.mp4"),
    ("a.mp4", "ffv1", "a.mkv"), ("a.webm", "png", "a")])
def test_output_names_keep_the_name_in_the_codecs_container(name, codec, expected):
    assert output_name(Path(name), codec) == expected


def test_plans_are_sorted_and_refuse_collisions_and_the_input_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b10.mp4", "b2.mkv", "a.mov", ".hidden.mp4"):
        (folder / name).write_bytes(b"")
    plan = plan_batch(folder, tmp_path / "out", None)
    assert [(i.name, o.name) for i, o in plan] == [("a.mov", "a.mov"), ("b2.mkv", "b2.mkv"),
                                                   ("b10.mp4", "b10.mp4")]
    with pytest.raises(BatchError, match="is the input folder"):
        plan_batch(folder, folder, None)
    (folder / "a.mp4").write_bytes(b"")
    with pytest.raises(BatchError, match="a.mov and a.mp4 would both be written"):
        plan_batch(folder, tmp_path / "out", "ffv1")


def test_shards_split_the_files_without_overlap(monkeypatch):
    taken = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        shard = Shard.from_env()
        assert shard.local_rank == rank and shard.label == f"[{rank + 1}/3] "
        taken += [i for i in range(10) if shard.takes(i)]
    assert sorted(taken) == list(range(10))
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(LaunchError, match="does not fit WORLD_SIZE=3"):
        Shard.from_env()


def test_a_batch_skips_finished_outputs_and_goes_on_after_a_failure(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        (folder / name).write_bytes(b"")
    out.mkdir()
    (out / "b.mp4").write_bytes(b"done before")
    mark_complete(folder / "b.mp4", out / "b.mp4")  # what a finished run leaves beside it
    calls = []

    def upscale_one(video: Path, output: Path, overwrite: bool) -> None:
        calls.append(video.name)
        if video.name == "c.mp4":
            raise BatchError("c.mp4 is damaged")
        output.write_bytes(b"new")

    report = run_batch(folder, out, None, False, Shard(), upscale_one)
    assert calls == ["a.mp4", "c.mp4", "d.mp4"]
    assert [p.name for p in report.done] == ["a.mp4", "d.mp4"]
    assert [p.name for p in report.skipped] == ["b.mp4"]
    assert report.failed == [(folder / "c.mp4", "c.mp4 is damaged")]
    assert (out / "b.mp4").read_bytes() == b"done before"
    calls.clear()  # run again: only the failed one is left to do
    run_batch(folder, out, None, False, Shard(), upscale_one)
    assert calls == ["c.mp4"]


def test_hidden_videos_are_skipped_and_named(tmp_path, caplog):
    """A file named ``..mp4`` is hidden (its name starts with a dot), as are the ``._NAME``
    files macOS leaves on other disks: a note names each."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.mp4", "..mp4", "._b.mov", ".notes.txt"):
        (folder / name).write_bytes(b"")
    calls = []
    report = run_batch(folder, tmp_path / "out", None, False, Shard(),
                       lambda video, output, overwrite: calls.append(video.name))
    assert calls == ["a.mp4"] and report.failed == []
    assert (f"note: not upscaled: ..mp4, ._b.mov in {folder} (a batch skips hidden files, "
            f"whose names start with a dot: rename them to include them)") in caplog.text
    assert ".notes.txt" not in caplog.text  # not a video


def test_an_output_folder_that_cannot_be_made_is_one_error_line(tmp_path, media,
                                                                tiny_checkpoint):
    """Its path runs through a file: mkdir fails (ENOTDIR) as it would in a read-only
    folder, which root, running the tests, may write to anyway."""
    folder = tmp_path / "videos"
    folder.mkdir()
    media.write_video(folder / "a.mp4", media.synthetic_frames(1, width=32, height=24))
    (tmp_path / "taken").write_text("a file\n")
    before = names(tmp_path)
    result = invoke(folder, "-o", tmp_path / "taken" / "upscaled", "--checkpoint",
                    tiny_checkpoint)
    assert_clean_failure(result, f"cannot create the output folder {tmp_path}/taken/upscaled "
                                 f"({tmp_path}/taken is a file)", tmp_path, before)


def test_a_record_that_cannot_be_written_keeps_the_output_with_a_note(tmp_path, monkeypatch,
                                                                     caplog):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"")

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(batch, "atomic_write_text", full_disk)
    report = run_batch(folder, out, None, False, Shard(),
                       lambda video, output, overwrite: output.write_bytes(b"whole"))
    assert [p.name for p in report.done] == ["a.mp4"] and report.failed == []
    assert (out / "a.mp4").read_bytes() == b"whole"
    assert (f"{out / 'a.mp4'} is complete, but its completion record cannot be written (No "
            f"space left on device): a rerun will upscale a.mp4 again") in caplog.text


def test_torchrun_shares_a_folder_out_and_a_rerun_resumes(tmp_path, media, tiny_checkpoint):
    """Two CPU processes under torchrun: each video is upscaled exactly once; running the
    same command again finds everything done."""
    folder, out = tmp_path / "videos", tmp_path / "out"
    folder.mkdir()
    for k, name in enumerate(("clip1.mp4", "clip2.mkv", "clip3.mov")):
        media.write_video(folder / name, media.synthetic_frames(1, width=32, height=24,
                                                                seed=k))
    args = [str(folder), "-o", str(out), "--checkpoint", str(tiny_checkpoint), "--threads", "1"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                             "2", "--standalone", "-m", "hirn.runtime.cli", *args],
                            capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    # each summary line names the process and the output it wrote
    written = re.findall(r"\[(\d)/2\] 1 frame in .* -> \S+/(\S+)$", result.stdout, re.M)
    assert sorted(written) == [("1", "clip1.mp4"), ("1", "clip3.mov"), ("2", "clip2.mkv")]
    outputs = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert [p.name for p in outputs] == ["clip1.mp4", "clip2.mkv", "clip3.mov"]
    for path in outputs:
        source = open_source(path)
        assert (source.width, source.height, source.frame_count) == (128, 96, 1)
    again = CliRunner().invoke(main, args)  # in this process: no torchrun variables
    assert again.exit_code == 0, again.output
    assert "batch: 0 upscaled, 3 skipped (already complete), 0 failed" in again.output


def test_a_folder_of_images_upscales_as_one_sequence(tmp_path, media, tiny_checkpoint,
                                                     one_thread):
    frames = media.write_images(tmp_path / "frames", media.synthetic_frames(2)[::-1],
                                names=["frame10.png", "frame9.png"])  # natural order: 9, 10
    result = CliRunner().invoke(main, [str(frames), "-o", str(tmp_path / "out"), "--checkpoint",
                                       str(tiny_checkpoint), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "2 frames in" in result.output and "batch" not in result.output
    out = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in out] == ["000000.png", "000001.png"]
    first = cv2.resize(cv2.imread(str(out[0])), (64, 48), interpolation=cv2.INTER_AREA)
    distance = {name: np.abs(first.astype(int) - cv2.imread(str(frames / name))).mean()
                for name in ("frame9.png", "frame10.png")}
    assert distance["frame9.png"] < distance["frame10.png"]  # frame9 came first
