"""``--resume``: a run killed with SIGKILL continues from its first unfinished window (another
batch size allowed), and the joined output equals an uninterrupted run's; other options are
refused; segments are joined without encoding them again; a damaged segment is computed again,
a damaged manifest or a work folder that is not the run's own is refused, and a second run
into the same output is refused while the first holds the folder.

The killed run is a real ``hirn-run`` process on a clip made here with PyAV (17 frames in
windows of 8: 2 windows, each one segment), killed once its first segment is on record; two
runs at once are two such processes. The join, the damage and the refusals run in-process,
without the model, in 3 windows of 4 frames and more.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from support import RUN_MAX_LEVELS, assert_clean_failure, default_sigint, invoke, names, run_cli

from hirn.core.errors import ResumeError
from hirn.media.video import open_source, read_frames
from hirn.runtime import resume_folder
from hirn.runtime.backends.base import BackendConfig
from hirn.runtime.pipeline import RunConfig, open_output
from hirn.runtime.resume import model_identity, open_segments, work_folder
from hirn.runtime.resume_folder import LOCK, MANIFEST
from hirn.runtime.windows import GOP_FRAMES, plan_windows

# 17 frames: windows of 8 write frames 0-7 and 8-16 (each reads 16, HiRN's least); windows
# of 4 write 0-3, 4-7 and 8-16
FRAMES, WINDOW, SHORT_WINDOW = 17, 8, 4
RUN_TIMEOUT_S = 900  # one hirn-run of the clip: 25-300 s measured on the loaded 2-core machine
THREADS = ("--threads", "1")  # one thread runs fastest on a loaded 2-core machine


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media) -> Path:
    """17 synthetic 64x64 frames, H.264 in MP4 at 25 fps, with an AAC tone as long."""
    path = tmp_path_factory.mktemp("resume") / "clip.mp4"
    return media.write_video(path, media.synthetic_frames(FRAMES, 64, 64), options={"crf": "18"},
                             audio=("aac", media.tone_rate, media.tone(FRAMES / media.fps)))


def _args(clip: Path, out: Path, checkpoint: Path, *extra) -> list[str]:
    return [str(a) for a in (clip, "-o", out, "--checkpoint", checkpoint, "--window", WINDOW,
                             "--overlap", 0, "--codec", "ffv1", *THREADS, *extra)]


def _recorded(out: Path) -> list[dict]:
    """The finished windows on record in the work folder of ``out`` (none if absent)."""
    try:
        return json.loads((work_folder(out) / MANIFEST).read_text())["segments"]
    except (OSError, ValueError):  # not yet written (it is replaced atomically)
        return []


def _timestamps(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [frame.pts for frame in container.decode(video=0)]


def test_a_killed_run_resumes_at_another_batch_size_and_equals_an_uninterrupted_run(
        clip, tiny_checkpoint, tmp_path):
    reference = tmp_path / "plain" / "out.mkv"
    reference.parent.mkdir()
    plain = run_cli("hirn-run", *_args(clip, reference, tiny_checkpoint),
                    timeout=RUN_TIMEOUT_S)
    assert plain.returncode == 0, plain.stderr

    out = tmp_path / "out.mkv"
    args = _args(clip, out, tiny_checkpoint, "--resume", "--log-level", "debug")
    process = subprocess.Popen([shutil.which("hirn-run"), *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    seen = []
    for line in process.stderr:  # said once the first segment is on record: kill at once
        seen.append(line)
        if "window 0 (frames 0-7) kept in" in line:
            process.send_signal(signal.SIGKILL)
            break
    assert _recorded(out), seen
    process.communicate(timeout=RUN_TIMEOUT_S)
    assert process.returncode == -signal.SIGKILL
    done = _recorded(out)
    assert len(done) == 1 and not out.exists()  # the second window was under way
    assert all((work_folder(out) / s["file"]).exists() for s in done)

    # --batch-size may change (the first run was without it): the frames are the same
    result = run_cli("hirn-run", *args, "--batch-size", "1", timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert f"continuing from window {len(done)} " in result.stderr, result.stderr
    assert f"{len(done) * WINDOW} frames) kept from an earlier run" in result.stderr
    # only the unfinished windows were computed and encoded again
    assert f"{FRAMES - len(done) * WINDOW} frames in " in result.stdout, result.stdout
    resumed, plain_frames = read_frames(out).astype(int), read_frames(reference).astype(int)
    kept = len(done) * WINDOW  # the kept segment's frames: as they were
    np.testing.assert_array_equal(resumed[:kept], plain_frames[:kept])
    # computed one frame at a time where the uninterrupted run batched 4 (measured: 1 value
    # of 3342336 a level off)
    assert np.abs(resumed[kept:] - plain_frames[kept:]).max() <= RUN_MAX_LEVELS
    assert _timestamps(out) == _timestamps(reference)
    assert open_source(out).has_audio
    assert names(tmp_path) == ["out.mkv", "plain"]  # the work folder is gone


def _as_the_cli(clip: Path, out: Path, checkpoint: Path):
    """The segments of ``out`` as the CLI's run with :func:`_args` opens them (on the CPU,
    where it resolves the precision to FP32)."""
    config = RunConfig(window=WINDOW, overlap=0, codec="ffv1", resume=True, fit_batch=True)
    model = model_identity(BackendConfig(checkpoint=checkpoint, precision="fp32"))
    return open_segments(open_source(clip), out, config, model)


@pytest.fixture
def folder_of_run(clip, tiny_checkpoint, tmp_path):
    """The work folder of ``out.mkv`` as the CLI's run with ``--window 8 --overlap 0 --codec
    ffv1`` makes it, before any window is finished."""
    out = tmp_path / "out.mkv"
    _as_the_cli(clip, out, tiny_checkpoint).abort()
    assert names(tmp_path) == [work_folder(out).name]
    return out


def test_other_options_or_another_input_are_refused_naming_what_changed(
        folder_of_run, clip, tiny_checkpoint, tmp_path, media):
    out = folder_of_run
    before = names(tmp_path)
    result = invoke(*_args(clip, out, tiny_checkpoint, "--resume", "--window", 6))
    assert_clean_failure(result, "options.window: 8 -> 6", tmp_path, before)
    assert f"delete {work_folder(out)} to start over" in result.output

    other = tmp_path / "other.mkv"
    model = model_identity(BackendConfig(checkpoint=tiny_checkpoint))
    config = RunConfig(window=WINDOW, overlap=0, codec="ffv1", resume=True)
    with pytest.raises(ResumeError, match="options.codec: 'ffv1' -> None"):
        open_segments(open_source(clip), out, RunConfig(window=WINDOW, overlap=0, resume=True),
                      model)
    # the input rewritten in place (other frames, same name)
    changed = tmp_path / "clip.mp4"
    shutil.copy(clip, changed)
    open_segments(open_source(changed), other, config, model).abort()
    media.write_video(changed, media.synthetic_frames(FRAMES, 64, 64, seed=1))
    with pytest.raises(ResumeError, match=r"input\.size: \d+ -> \d+"):
        open_segments(open_source(changed), other, config, model)
    # a pipe cannot be taken up again
    piped = invoke("-", "-o", tmp_path / "piped.mkv", "--checkpoint", tiny_checkpoint,
                   "--resume")
    assert piped.exit_code == 2 and "--resume needs an input file" in piped.output
    # the same run again is taken up
    again = _as_the_cli(clip, out, tiny_checkpoint)
    assert again.first_unfinished == 0
    again.abort()


def _write_windows(segments, images, stamps, windows) -> None:
    """What the pipeline does for each window: announce it, then write its frames."""
    for index, window in windows:
        segments.begin(index, window)
        for i in range(window.keep_start, window.keep_stop):
            segments.write(images[i], stamps[i])


def _hr_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), np.uint8)


def test_h264_segments_are_joined_without_encoding_again(clip, tmp_path):
    source = open_source(clip)
    stamps = [pts for _, pts in source]
    images = _hr_images(FRAMES, 4 * 64)
    out = tmp_path / "out.mp4"
    windows = list(enumerate(plan_windows(FRAMES, SHORT_WINDOW, 0, GOP_FRAMES)))
    config = RunConfig(window=SHORT_WINDOW, overlap=0, resume=True)
    segments = open_segments(source, out, config)
    _write_windows(segments, images, stamps, windows)
    packets, keyframes = [], []
    for segment in _recorded(out):
        with av.open(str(work_folder(out) / segment["file"])) as container:
            these = [p for p in container.demux(video=0) if p.size]
            keyframes.append(these[0].is_keyframe)
            packets += [bytes(p) for p in these]
    segments.close()
    assert keyframes == [True] * len(windows)  # each segment its own stream
    with av.open(str(out)) as container:
        assert [bytes(p) for p in container.demux(video=0) if p.size] == packets
    assert _timestamps(out) == [round(t * source.time_base / open_source(out).time_base)
                                for t in stamps]
    assert open_source(out).has_audio
    assert names(tmp_path) == ["out.mp4"]


def test_a_png_folder_resumes_from_its_first_unfinished_window(clip, tmp_path):
    source = open_source(clip)
    stamps = [pts for _, pts in source]
    images = _hr_images(FRAMES, 4 * 64, seed=2)
    out = tmp_path / "frames"
    config = RunConfig(window=SHORT_WINDOW, overlap=0, resume=True)
    windows = list(enumerate(plan_windows(FRAMES, SHORT_WINDOW, 0, GOP_FRAMES)))
    first = open_segments(source, out, config)
    _write_windows(first, images, stamps, windows[:2])
    first.abort()  # stopped after two windows
    assert not out.exists()

    again = open_segments(open_source(clip), out, config)
    assert again.first_unfinished == 2
    assert [again.finished(i, w) for i, w in windows] == [True, True, False]
    _write_windows(again, images, stamps, windows[2:])
    again.close()
    assert again.frames_written == FRAMES - 2 * SHORT_WINDOW  # this run wrote the last only
    np.testing.assert_array_equal(read_frames(out), images)
    assert names(tmp_path) == ["frames"]
    # what a run without --resume notes about the folder (the audio it cannot hold)
    plain = open_output(open_source(clip), tmp_path / "plain", config)
    plain.abort()
    assert plain.notes and set(plain.notes) <= set(again.notes)


# -- a second run at the same time ---------------------------------------------------------------

def _lock_holder(lock: Path) -> int | None:
    """The process id written in a work folder's lock file (None before it is written)."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def test_a_second_run_into_the_same_output_is_refused_naming_the_first(
        clip, tiny_checkpoint, tmp_path):
    fcntl = pytest.importorskip("fcntl")  # the lock is POSIX's (Windows runs without it)
    out = tmp_path / "out.mkv"
    args = _args(clip, out, tiny_checkpoint, "--resume")
    lock = work_folder(out) / LOCK
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([shutil.which("hirn-run"), *args], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while _lock_holder(lock) is None and first.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert _lock_holder(lock) == first.pid, (tmp_path / "first.log").read_text()
        first.send_signal(signal.SIGSTOP)  # it keeps the lock for as long as the test needs
        second = run_cli("hirn-run", *args, timeout=RUN_TIMEOUT_S)
        assert second.returncode == 1, second.stderr
        assert (f"Error: another hirn-run (pid {first.pid}) is resuming into {out}: wait for "
                f"it or stop it") in second.stderr
        assert "Traceback" not in second.stderr and "frames in" not in second.stdout
        assert _lock_holder(lock) == first.pid and not out.exists()
    finally:
        first.kill()
        first.wait()
    # the lock went with the killed process
    with open(lock, "rb") as file:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_lock_refuses_a_second_opening_and_is_skipped_without_flock(
        folder_of_run, clip, tiny_checkpoint, monkeypatch):
    out = folder_of_run
    held = _as_the_cli(clip, out, tiny_checkpoint)
    with pytest.raises(ResumeError, match=rf"another hirn-run \(pid {os.getpid()}\)"):
        _as_the_cli(clip, out, tiny_checkpoint)
    held.abort()  # gives the lock back
    monkeypatch.setattr(resume_folder, "fcntl", None)  # as on Windows
    both = [_as_the_cli(clip, out, tiny_checkpoint) for _ in range(2)]
    assert [s.first_unfinished for s in both] == [0, 0]
    for segments in both:
        segments.abort()


# -- a work folder that is not the run's own -----------------------------------------------------

def test_a_work_folder_that_is_a_symlink_a_file_or_another_users_is_refused(
        folder_of_run, clip, tiny_checkpoint, tmp_path, monkeypatch):
    # a symlink to another folder: segments would be written there, and left behind
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked.mkv"
    work_folder(linked).symlink_to(elsewhere)
    before = names(tmp_path)
    result = invoke(*_args(clip, linked, tiny_checkpoint, "--resume"))
    assert_clean_failure(result, f"{work_folder(linked)} is a symlink, not hirn-run's resume "
                                 f"folder", tmp_path, before)
    assert names(elsewhere) == []
    # a file of that name: the advice names the file
    filed = tmp_path / "filed.mkv"
    work_folder(filed).write_text("someone's notes\n")
    before = names(tmp_path)
    result = invoke(*_args(clip, filed, tiny_checkpoint, "--resume"))
    assert_clean_failure(result, f"{work_folder(filed)} is a file, not hirn-run's resume "
                                 f"folder: move or delete it", tmp_path, before)
    assert work_folder(filed).read_text() == "someone's notes\n"
    # a folder of another user
    owner = work_folder(folder_of_run).stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(ResumeError, match=f"belongs to another user \\(uid {owner}\\)"):
        _as_the_cli(clip, folder_of_run, tiny_checkpoint)


# -- a damaged work folder -----------------------------------------------------------------------

def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _without_hashes(manifest: dict) -> None:
    """The segments as an older hirn-run recorded them: without size or hash."""
    for segment in manifest["segments"]:
        segment.pop("size", None)
        segment.pop("sha256", None)


@pytest.fixture
def stopped_run(clip, tmp_path):
    """An FFV1 output in 3 windows of 4 frames, all finished (each a segment on record) and
    stopped before the join: the output, its config, windows, frames and timestamps."""
    source = open_source(clip)
    run = SimpleNamespace(out=tmp_path / "out.mkv", stamps=[pts for _, pts in source],
                          images=_hr_images(FRAMES, 4 * 64, seed=3),
                          config=RunConfig(window=SHORT_WINDOW, overlap=0, codec="ffv1",
                                           resume=True),
                          windows=list(enumerate(plan_windows(FRAMES, SHORT_WINDOW, 0,
                                                              GOP_FRAMES))))
    segments = open_segments(source, run.out, run.config)
    _write_windows(segments, run.images, run.stamps, run.windows)
    segments.abort()
    return run


def _garbage(folder: Path) -> None:
    (folder / "000001.mkv").write_bytes(np.random.default_rng(0).bytes(4096))


def _another_segment(folder: Path) -> None:  # a valid segment of the same run, as long
    shutil.copy(folder / "000000.mkv", folder / "000001.mkv")


def _a_flipped_byte(folder: Path) -> None:  # as long, one byte of its frames changed
    segment = folder / "000001.mkv"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))


def _missing(folder: Path) -> None:
    (folder / "000001.mkv").unlink()


def _a_symlink(folder: Path) -> None:
    (folder / "000001.mkv").unlink()
    (folder / "000001.mkv").symlink_to(folder / "000000.mkv")


def _other_frames(folder: Path) -> None:  # the record edited: its frames are not the window's
    _edit_manifest(folder, lambda manifest: manifest["segments"][1].update(start=5))


DAMAGES = {"garbage bytes": _garbage, "another segment": _another_segment,
           "missing": _missing, "a symlink": _a_symlink, "other frames": _other_frames}
# with hashes (this hirn-run's manifest) and without (an older one's: the segments decoded)
DAMAGE_CASES = [pytest.param(damage, older, id=f"{name}-{'older' if older else 'hashed'}")
                for name, damage in DAMAGES.items() for older in (False, True)]
# a flipped byte still decodes (FFV1): only the hash sees it
DAMAGE_CASES.append(pytest.param(_a_flipped_byte, False, id="a flipped byte-hashed"))


@pytest.mark.parametrize("damage, older", DAMAGE_CASES)
def test_a_damaged_segment_is_named_and_computed_again(stopped_run, damage, older, clip,
                                                       tmp_path, caplog):
    run, folder = stopped_run, work_folder(stopped_run.out)
    if older:
        _edit_manifest(folder, _without_hashes)
    damage(folder)
    frames = "5-7" if damage is _other_frames else "4-7"
    again = open_segments(open_source(clip), run.out, run.config)
    assert [again.finished(i, w) for i, w in run.windows] == [True, False, True]
    assert f"segment 1 (frames {frames}) is damaged: computing it again" in caplog.text
    _write_windows(again, run.images, run.stamps, run.windows[1:2])
    again.close()
    assert again.frames_written == SHORT_WINDOW  # only the damaged window was encoded again
    np.testing.assert_array_equal(read_frames(run.out), run.images)
    plain = open_output(open_source(clip), tmp_path / "plain.mkv", run.config)
    for image, pts in zip(run.images, run.stamps):
        plain.write(image, pts)
    plain.close()
    assert _timestamps(run.out) == _timestamps(plain.path)  # as a run without --resume
    assert names(tmp_path) == ["out.mkv", "plain.mkv"]


def _json_edit(change):
    def edit(text: str) -> str:
        manifest = json.loads(text)
        change(manifest)
        return json.dumps(manifest)
    return edit


MALFORMED = {
    "a list": (lambda text: f"[{text}]", "it holds a list, not an object"),
    "segments a string": (_json_edit(lambda m: m.update(segments="000000.mkv")),
                          "'segments' is a string, not a list"),
    "an entry without start": (_json_edit(lambda m: m["segments"][0].pop("start")),
                               "segments[0] lacks 'start'"),
    "a window as a string": (_json_edit(lambda m: m["segments"][1].update(window="1")),
                             "segments[1] has a string for 'window', not a number"),
    "a size without its hash": (_json_edit(lambda m: m["segments"][1].pop("sha256")),
                                "segments[1] has one of 'size' and 'sha256' without the other"),
    "a window twice": (_json_edit(lambda m: m["segments"][1].update(window=0)),
                       "segments[1] records window 0 again"),
    "no output": (_json_edit(lambda m: m.pop("output")), "it lacks 'output'"),
}


@pytest.mark.parametrize("edit, phrase", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_manifest_is_refused_before_any_work(folder_of_run, edit, phrase, clip,
                                                         tiny_checkpoint, tmp_path):
    out = folder_of_run
    segments = _as_the_cli(clip, out, tiny_checkpoint)
    windows = list(enumerate(plan_windows(FRAMES, WINDOW, 0, GOP_FRAMES)))
    _write_windows(segments, _hr_images(FRAMES, 4 * 64), [pts for _, pts in open_source(clip)],
                   windows)
    segments.abort()  # both windows finished, not joined
    manifest = work_folder(out) / MANIFEST
    manifest.write_text(edit(manifest.read_text()))
    kept = {p.name: p.read_bytes() for p in work_folder(out).iterdir() if p.name != LOCK}
    before = names(tmp_path)
    result = invoke(*_args(clip, out, tiny_checkpoint, "--resume"))
    assert_clean_failure(result, f"{manifest} is not a manifest of hirn-run --resume "
                                 f"({phrase}", tmp_path, before)
    assert f"delete {work_folder(out)} to start over" in result.output
    assert {p.name: p.read_bytes() for p in work_folder(out).iterdir() if p.name != LOCK} == kept
