"""``--resume``: a run killed with SIGKILL continues from its first unfinished window, and the
joined output equals an uninterrupted run's; other options are refused; segments are joined
without encoding them again.

The killed run is a real ``hirn-run`` process on a clip made here with PyAV (17 frames in
windows of 8: 2 windows, each one segment), killed once its first segment is on record. The
join and the refusals run in-process, without the model, in 3 windows of 4 frames and more.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from support import assert_clean_failure, default_sigint, invoke, names, run_cli

from hirn.core.errors import ResumeError
from hirn.runtime.backends.base import BackendConfig
from hirn.runtime.pipeline import RunConfig, open_output
from hirn.runtime.resume import MANIFEST, model_identity, open_segments, work_folder
from hirn.runtime.video import open_source, read_frames
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


def test_a_killed_run_resumes_and_equals_an_uninterrupted_run(clip, tiny_checkpoint, tmp_path):
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

    result = run_cli("hirn-run", *args, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert f"continuing from window {len(done)} " in result.stderr, result.stderr
    assert f"{len(done) * WINDOW} frames) kept from an earlier run" in result.stderr
    # only the unfinished windows were computed and encoded again
    assert f"{FRAMES - len(done) * WINDOW} frames in " in result.stdout, result.stdout
    np.testing.assert_array_equal(read_frames(out), read_frames(reference))
    assert _timestamps(out) == _timestamps(reference)
    assert open_source(out).has_audio
    assert names(tmp_path) == ["out.mkv", "plain"]  # the work folder is gone


@pytest.fixture
def folder_of_run(clip, tiny_checkpoint, tmp_path):
    """The work folder of ``out.mkv`` as the CLI's run with ``--window 4 --overlap 0 --codec
    ffv1`` makes it, before any window is finished."""
    out = tmp_path / "out.mkv"
    config = RunConfig(window=WINDOW, overlap=0, codec="ffv1", resume=True)
    model = model_identity(BackendConfig(checkpoint=tiny_checkpoint))
    open_segments(open_source(clip), out, config, model).abort()
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
    assert open_segments(open_source(clip), out, config, model).first_unfinished == 0


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
