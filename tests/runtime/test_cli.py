"""``hirn-run`` end to end: real MP4 in, the model's frames out, and clear errors.

The main runs are subprocesses of the installed console script on a real MP4 (Vid4
calendar frames with an AAC track); the many error cases run in-process through click's
test runner (the same code, without a process start each), and Ctrl-C and a full disk run
as subprocesses because they need a real signal and a real file-size limit.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import tqdm.std
from support import (
    AUDIO_SECONDS_ATOL,
    RUN_MAX_LEVELS,
    RUN_MIN_SHARE_WITHIN,
    RUN_TORCH_MAX_LEVELS,
    assert_clean_failure,
    default_sigint,
    invoke,
    names,
    run_cli,
)

from hirn.export.onnx_export import export_onnx
from hirn.media.video import open_source, read_frames
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.cli import EXIT_INTERRUPTED, EXIT_TERMINATED
from hirn.runtime.driver import upscale_clip
from hirn.runtime.padding import to_float, to_uint8
from hirn.runtime.progress import progress_bar
from hirn.train import load_model

SIGNAL_TIMEOUT_S = 120  # for the subprocesses stopped by a signal or a full disk

THREADS = ("--threads", "1")  # one thread runs fastest on a loaded 2-core machine


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()



def audio_seconds(path: Path) -> list[float]:
    """Duration of each audio stream, from its packets (MKV keeps no stream duration)."""
    with av.open(str(path)) as container:
        spans = []
        for stream in container.streams.audio:
            stamps = [(p.pts, p.pts + p.duration) for p in container.demux(stream)
                      if p.size and p.pts is not None]
            container.seek(0)
            spans.append(float((max(e for _, e in stamps) - min(s for s, _ in stamps))
                               * stream.time_base))
        return spans




@pytest.fixture(scope="module")
def expected(calendar_small_mp4, tiny_checkpoint) -> np.ndarray:
    """The PyTorch model's output on the decoded MP4 frames, clamped and rounded:
    ``[T, 4H, 4W, 3]`` uint8."""
    frames = read_frames(calendar_small_mp4)
    model = load_model(tiny_checkpoint)
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = model(clip[None])[0]
    finally:
        torch.set_num_threads(threads)
    return (out.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def runtime_expected(calendar_small_mp4, tiny_checkpoint) -> np.ndarray:
    """The runtime's torch backend in this process, hirn-run's default batches: what hirn-run
    must write bit for bit (the model decodes frame by frame, which rounds a few values
    otherwise)."""
    runner = TorchRunner(load_model(tiny_checkpoint))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return to_uint8(upscale_clip(runner, to_float(read_frames(calendar_small_mp4))))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, calendar_small_mp4, tiny_checkpoint):
    """hirn-run with the torch backend into lossless FFV1 (one window covers the clip)."""
    out = tmp_path_factory.mktemp("torch_run") / "out.mkv"
    result = run_cli("hirn-run", str(calendar_small_mp4), "-o", str(out), "--checkpoint",
                     str(tiny_checkpoint), "--codec", "ffv1", "--precision", "fp32", *THREADS)
    return result, out


def test_output_equals_the_model_with_size_frames_timestamps_and_audio(
        torch_run, expected, runtime_expected, calendar_small_mp4):
    result, out = torch_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    frames = read_frames(out)
    assert frames.shape == (4, 256, 320, 3)  # 4 frames of 80x64, x4
    assert np.abs(frames.astype(int) - runtime_expected).max() <= RUN_TORCH_MAX_LEVELS
    within = np.abs(frames.astype(int) - expected) <= RUN_MAX_LEVELS
    assert within.mean() >= RUN_MIN_SHARE_WITHIN
    source, output = open_source(calendar_small_mp4), open_source(out)
    assert output.fps == source.fps and output.has_audio
    # frame times carried over (matroska moves the whole timeline by the AAC priming delay,
    # 23 ms here, as it stores no negative timestamps: compare from the first frame)
    times_in = [pts * source.time_base for _, pts in source]
    times_out = [pts * output.time_base for _, pts in output]
    assert [t - times_out[0] for t in times_out] == [t - times_in[0] for t in times_in]
    (audio_in,), (audio_out,) = audio_seconds(calendar_small_mp4), audio_seconds(out)
    assert audio_out == pytest.approx(audio_in, abs=AUDIO_SECONDS_ATOL)
    # the summary line: frames, seconds, frames/s, peak memory
    assert "4 frames in " in result.stdout and "frames/s" in result.stdout
    assert "peak memory" in result.stdout and "RSS" in result.stdout
    assert names(out.parent) == ["out.mkv"]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    folder = tmp_path_factory.mktemp("onnx") / "graphs"
    model = load_model(tiny_checkpoint)  # its size read from its weights
    export_onnx(tiny_checkpoint, folder, model=model)
    return folder


def test_onnx_backend_writes_what_the_torch_backend_writes(onnx_dir, torch_run,
                                                           calendar_small_mp4, tmp_path):
    out = tmp_path / "frames"
    result = invoke(calendar_small_mp4, "-o", out, "--onnx", onnx_dir, "--backend",
                    "onnxruntime", *THREADS)  # the default on the CPU is openvino
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output  # the backend is named on start
    frames, reference = read_frames(out), read_frames(torch_run[1])
    assert frames.shape == reference.shape == (4, 256, 320, 3)
    within = np.abs(frames.astype(int) - reference) <= RUN_MAX_LEVELS
    assert within.mean() >= RUN_MIN_SHARE_WITHIN
    assert "audio not written" in result.output  # a PNG folder holds none: said


# ---------------------------------------------------------------------------------------------
# Bad input and faults: a clear message, exit code 1, nothing written, the input untouched


@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"), ("empty", "is empty (0 bytes)"),
    ("text", "is not a video"), ("damaged", "is not a video FFmpeg can read"),
    ("no frames", "is empty"), ("image", "is a single image")])
def test_inputs_that_are_not_videos(kind, message, tmp_path, media, tiny_checkpoint):
    name = {"image": "frame.png", "text": "notes.txt"}.get(kind, "in.mkv")
    path = tmp_path / name
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, this is not a video\n" * 20)
    elif kind == "damaged":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "no frames":
        media.write_video(path, [], codec="ffv1", pix_fmt="bgr0")
    elif kind == "image":
        media.write_images(tmp_path, [media.synthetic_frames(1)[0]], names=[name])
    before = names(tmp_path)
    digest = sha256(path) if path.exists() else None
    result = invoke(path, "-o", tmp_path / "out.mp4", "--checkpoint", tiny_checkpoint)
    assert_clean_failure(result, message, tmp_path, before)
    assert (sha256(path) if path.exists() else None) == digest


@pytest.fixture
def small_input(tmp_path, media) -> Path:
    return media.write_video(tmp_path / "in.mp4", media.synthetic_frames(2))


@pytest.mark.parametrize("case, message", [
    ("onnxruntime without a folder", "the onnxruntime backend needs --onnx DIR"),
    ("missing checkpoint", "checkpoint not found"),
    ("damaged checkpoint", "cannot read checkpoint"),
    ("mismatched checkpoint", "does not fit HiRN"),
    ("missing onnx", "ONNX folder not found"),
    ("not an onnx folder", "has no manifest.json"),
    ("engines", "not a hirn engine folder"),
    ("backend mismatch", "--backend torch does not run --onnx"),
    ("two weights", "--checkpoint and --onnx were both given"),
    ("fp16 on cpu", "FP16 needs a CUDA device"),
    ("compile with onnx", "--compile applies to the torch backend only"),
    ("compile with engines", "--compile applies to the torch backend only"),
    ("cuda graphs with onnx", "--cuda-graphs applies to the torch and tensorrt backends"),
    ("cuda graphs on cpu", "CUDA graphs need --device cuda"),
    ("cuda without gpu", "PyTorch sees no CUDA GPU")])
def test_missing_or_mismatched_weights(case, message, small_input, tmp_path, tiny_checkpoint):
    if case == "cuda without gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    weights = {"onnxruntime without a folder": ["--backend", "onnxruntime"],
               "missing checkpoint": ["--checkpoint", tmp_path / "no.pth"],
               "damaged checkpoint": ["--checkpoint", tmp_path / "bad.pth"],
               "mismatched checkpoint": ["--checkpoint", tmp_path / "other.pth"],
               "missing onnx": ["--onnx", tmp_path / "nowhere"],
               "not an onnx folder": ["--onnx", tmp_path / "empty"],
               "engines": ["--engines", tmp_path / "empty"],
               "backend mismatch": ["--backend", "torch", "--onnx", tmp_path / "empty"],
               "two weights": ["--checkpoint", tiny_checkpoint, "--onnx", tmp_path / "empty"],
               "fp16 on cpu": ["--checkpoint", tiny_checkpoint, "--precision", "fp16"],
               "compile with onnx": ["--onnx", tmp_path / "empty", "--compile"],
               "compile with engines": ["--engines", tmp_path / "empty", "--compile"],
               "cuda graphs with onnx": ["--onnx", tmp_path / "empty", "--cuda-graphs"],
               "cuda graphs on cpu": ["--checkpoint", tiny_checkpoint, "--cuda-graphs"],
               "cuda without gpu": ["--checkpoint", tiny_checkpoint, "--device", "cuda"]}[case]
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage")
    torch.save({"params": {"conv.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    (tmp_path / "empty").mkdir()
    before = names(tmp_path)
    result = invoke(small_input, "-o", tmp_path / "out.mp4", *weights)
    assert_clean_failure(result, message, tmp_path, before)


def test_an_altered_or_mismatched_onnx_folder_is_refused(onnx_dir, small_input, tmp_path):
    altered = tmp_path / "graphs"
    shutil.copytree(onnx_dir, altered)
    graph = altered / "decode.onnx"
    graph.write_bytes(graph.read_bytes()[:-100])
    before = names(tmp_path)
    result = invoke(small_input, "-o", tmp_path / "out.mp4", "--onnx", onnx_dir,
                    "--precision", "fp16")
    assert_clean_failure(result, "holds fp32 graphs, not fp16", tmp_path, before)
    result = invoke(small_input, "-o", tmp_path / "out.mp4", "--onnx", altered)
    assert_clean_failure(result, "truncated or replaced; re-export the folder", tmp_path,
                         before)


def test_output_that_is_the_input_or_exists(small_input, tmp_path, tiny_checkpoint):
    digest = sha256(small_input)
    (tmp_path / "taken.mp4").write_bytes(b"keep me")
    before = names(tmp_path)
    result = invoke(small_input, "-o", small_input, "--checkpoint", tiny_checkpoint)
    assert_clean_failure(result, "is the input", tmp_path, before)
    result = invoke(small_input, "-o", tmp_path / "taken.mp4", "--checkpoint", tiny_checkpoint)
    assert_clean_failure(result, "already exists: pass --overwrite", tmp_path,
                         before)
    assert (tmp_path / "taken.mp4").read_bytes() == b"keep me"
    assert sha256(small_input) == digest


def test_an_unwritable_destination_is_refused(small_input, tmp_path, tiny_checkpoint):
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir(mode=0o500)
    elif Path("/sys/kernel").is_dir():
        folder = Path("/sys")  # sysfs refuses new files, even to root
    else:
        pytest.skip("running as root without /sys: no folder here refuses root's writes")
    result = invoke(small_input, "-o", folder / "out.mp4", "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"cannot write into {folder}" in result.output
    assert not (folder / "out.mp4").exists()


def test_usage_mistakes(small_input, tmp_path, tiny_checkpoint):
    result = invoke(small_input, "--checkpoint", tiny_checkpoint)
    assert result.exit_code == 2 and "pass the output with -o OUTPUT" in result.output
    result = invoke(small_input, "-o", tmp_path / "o.mp4", "--frames", 3)
    assert result.exit_code == 2 and "--frames applies to hirn-run demo only" in result.output
    result = invoke(small_input, "-o", tmp_path / "o.mp4", "--window", 0)
    assert result.exit_code == 2 and "--window" in result.output
    result = invoke("--help")
    assert result.exit_code == 0 and "--overlap" in result.output and "demo" in result.output


@pytest.mark.parametrize("kind, note", [
    ("gray", "gray video (gray) converted to RGB"),
    ("alpha", "alpha channel of bgra dropped")])  # 10-bit: kept, tests/test_bit_depth.py
def test_gray_and_alpha_inputs_are_converted_with_a_note(kind, note, tmp_path, media,
                                                         tiny_checkpoint, one_thread):
    frames = media.synthetic_frames(1)
    if kind == "gray":
        path = media.write_video(tmp_path / "in.mkv", [frames[0][..., 0].copy()],
                                 codec="ffv1", pix_fmt="gray", in_format="gray")
    else:
        rgba = np.dstack([frames[0], np.full(frames[0].shape[:2], 9, np.uint8)])
        path = media.write_video(tmp_path / "in.mkv", [rgba], codec="ffv1", pix_fmt="bgra",
                                 in_format="rgba")
    result = invoke(path, "-o", tmp_path / "out.mp4", "--checkpoint", tiny_checkpoint, *THREADS)
    assert result.exit_code == 0, result.output
    assert result.output.count(note) == 1
    assert read_frames(tmp_path / "out.mp4").shape == (1, 192, 256, 3)


# ---------------------------------------------------------------------------------------------
# Signals and limits, in real processes


def _start(args: list, **options) -> subprocess.Popen:
    options.setdefault("preexec_fn", default_sigint)
    return subprocess.Popen([shutil.which("hirn-run"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **options)


@pytest.mark.parametrize("stop, code, said", [
    (signal.SIGINT, EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (signal.SIGTERM, EXIT_TERMINATED, "terminated")])  # what schedulers and torchrun send
def test_ctrl_c_stops_with_130_and_leaves_nothing(calendar_small_mp4, tiny_checkpoint,
                                                  tmp_path, stop, code, said):
    digest = sha256(calendar_small_mp4)
    out = tmp_path / "out.mp4"
    process = _start([calendar_small_mp4, "-o", out, "--checkpoint", tiny_checkpoint,
                      "--window", 1, "--overlap", 0, *THREADS])
    seen = []
    for line in process.stderr:  # the backend line comes when the model is about to run
        seen.append(line)
        if "windows write" in line:
            break
    assert any("windows write" in line for line in seen), seen
    assert len(names(tmp_path)) == 1  # the hidden temporary, while it works
    process.send_signal(stop)  # at once: the model has seconds of work left
    _, stderr = process.communicate(timeout=SIGNAL_TIMEOUT_S)
    assert process.returncode == code, stderr
    assert said in stderr and "Traceback" not in stderr
    assert names(tmp_path) == []
    assert sha256(calendar_small_mp4) == digest


def test_a_full_disk_ends_with_a_clear_message(calendar_small_mp4, tiny_checkpoint, tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: writes past it fail (EFBIG) like ENOSPC."""
    limit = 50_000  # bytes: less than one lossless 320x256 frame

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out.mkv"
    process = _start([calendar_small_mp4, "-o", out, "--checkpoint", tiny_checkpoint,
                      "--codec", "ffv1", "--window", 1, "--overlap", 0, *THREADS],
                     preexec_fn=limit_file_size)
    _, stderr = process.communicate(timeout=SIGNAL_TIMEOUT_S)
    assert process.returncode == 1, stderr
    assert f"writing {out} failed" in stderr and "file-size limit" in stderr, stderr
    assert "Traceback" not in stderr
    assert names(tmp_path) == []


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, quiet, shown", [(True, False, True), (True, True, False),
                                               (False, False, False)])
def test_progress_bar_only_on_a_terminal_and_not_when_quiet(monkeypatch, tty, quiet, shown):
    stderr = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    # tqdm redraws at most every 0.1 s by its clock: make each reading a second later, so
    # that every update redraws without waiting
    clock = itertools.count(1_000.0, 1.0)
    monkeypatch.setattr(tqdm.std, "time", lambda: next(clock))
    with progress_bar(10, "clip.mp4", quiet) as update:
        for count in (4, 1):
            update(count)
    text = stderr.getvalue()
    assert ("clip.mp4" in text and "4/10" in text and "frame/s" in text) == shown, text
