"""Faults a hostile run of ``hirn-run`` found, each on real files: damaged weights, a huge
window on a stream of unknown length, batch outputs that are not complete, options and
signals that gave tracebacks, and timing or messages lost on the way."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from support import assert_clean_failure, default_sigint, invoke, names, run_cli

from hirn.core.errors import BackendError
from hirn.core.schedule import make_plan
from hirn.media import video_writer
from hirn.media.video import open_sink, open_source, read_frames
from hirn.runtime import backends
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.batch import record_path
from hirn.runtime.cli import EXIT_HUNG_UP, EXIT_INTERRUPTED
from hirn.runtime.memory import (
    RECOMPUTE_EVERY,
    WindowMemoryError,
    check_window_fits,
    plan_size,
    window_bytes,
)
from hirn.runtime.windows import GOP_FRAMES
from hirn.train import HiRN, load_model, save_checkpoint

THREADS = ("--threads", "1")  # one thread runs fastest on a loaded 2-core machine
SIGNAL_TIMEOUT_S = 120  # for the subprocesses stopped by a signal
ADVICE_SECONDS = 2.0  # the memory advice for any window answers within this
# Address space (ulimit -v) given hirn-run beyond what importing it and loading the tiny model
# take (measured 0.78 GiB): its 256x256 windows need about 4 GiB more (peak 4.7 GiB in all);
# margins of 256 MiB to 1 GiB each ran out in the run (torch's allocator, oneDNN or a decoder
# failing first, as the margin decides), and each was said in the one line
ADDRESS_SPACE_MARGIN = 512 << 20





def start(args: list, **options) -> subprocess.Popen:
    """hirn-run as a subprocess with Ctrl-C handled as in a terminal."""
    options.setdefault("preexec_fn", default_sigint)
    return subprocess.Popen([shutil.which("hirn-run"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **options)


def wait_for(process: subprocess.Popen, text: str) -> list[str]:
    """Read the process's stderr until a line holds ``text``; the lines read."""
    seen = []
    for line in process.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came:\n{''.join(seen)}")


@pytest.fixture
def small_input(tmp_path, media) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return media.write_video(folder / "in.mp4", media.synthetic_frames(2))


def altered_checkpoint(tiny_checkpoint: Path, path: Path, change) -> Path:
    """The tiny checkpoint with ``change(state)`` applied to its weights."""
    state = torch.load(tiny_checkpoint, weights_only=True)["params"]
    change(state)
    return save_checkpoint(path, state)


# ---------------------------------------------------------------------------------------------
# 1. Weights that are not finite, and outputs that are not


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_weight(small_input, tmp_path,
                                                                    tiny_checkpoint):
    bad = altered_checkpoint(tiny_checkpoint, tmp_path / "nan.pth",
                             lambda state: state["conv_hr.bias"].__setitem__(0, float("nan")))
    before = names(small_input.parent)
    result = invoke(small_input, "-o", small_input.parent / "out.mp4", "--checkpoint", bad)
    assert_clean_failure(result, "has weights that are not finite (NaN or Inf), first in "
                                 "'conv_hr.bias'", small_input.parent, before)


def test_an_output_with_inf_or_nan_stops_the_run_and_writes_nothing(small_input, tmp_path,
                                                                    tiny_checkpoint,
                                                                    one_thread):
    """Finite weights so large that the output overflows: black frames and exit 0 before."""
    def enlarge(state):
        for key in ("upconv1.weight", "conv_hr.weight", "conv_last.weight"):
            state[key] *= 1e30

    huge = altered_checkpoint(tiny_checkpoint, tmp_path / "huge.pth", enlarge)
    before = names(small_input.parent)
    result = invoke(small_input, "-o", small_input.parent / "out.mp4", "--checkpoint", huge,
                    *THREADS)
    assert_clean_failure(result, "the model's output for frames 0-1 holds NaN or Inf values: "
                                 "the weights are probably damaged", small_input.parent, before)
    assert "nothing was written" in result.output


class PoisonedRunner(TorchRunner):
    """The FP32 torch runner posing as ``precision`` (FP16 overflow without a GPU): its
    decode calls numbered in ``poisoned`` (counted from 0) put a NaN into the last frame
    they return."""

    def __init__(self, model: HiRN, poisoned, precision: str = "fp16"):
        super().__init__(model)
        self.precision, self.element_size = precision, 2 if precision == "fp16" else 4
        self.poisoned, self.decodes = set(poisoned), 0

    def _run_impl(self, graph, inputs):
        output = super()._run_impl(graph, inputs)
        if graph == "decode":
            if self.decodes in self.poisoned:
                output = output.clone()
                output[-1, 0, 0, 0] = float("nan")
            self.decodes += 1
        return output


def runner_factory(monkeypatch, fp16, fp32=None) -> list:
    """``create_runner`` giving ``fp16(config)`` for --precision fp16, and ``fp32(config)``
    (None: the real runner) otherwise; the list returned records each precision asked."""
    asked, real = [], backends.create_runner

    def create_runner(config):
        asked.append(config.precision)
        if config.precision == "fp16":
            return fp16(config)
        return real(config) if fp32 is None else fp32(config)

    monkeypatch.setattr(backends, "create_runner", create_runner)
    return asked


def test_half_precision_windows_with_nan_are_computed_again_in_fp32(tmp_path, media,
                                                                    tiny_checkpoint,
                                                                    monkeypatch, one_thread):
    """One window of six frames decoded two at a time: poisoning decode calls 0 and 2 puts
    NaN into frames 1 and 5, and the window is computed again by an FP32 runner made then;
    a run without NaN never makes one."""
    video = media.write_video(tmp_path / "in.mp4", media.synthetic_frames(6))
    args = ["--checkpoint", tiny_checkpoint, "--codec", "ffv1", "--batch-size", 2, *THREADS]
    reference = invoke(video, "-o", tmp_path / "fp32.mkv", *args)
    assert reference.exit_code == 0, reference.output
    expected = read_frames(tmp_path / "fp32.mkv")
    for poisoned in ((0, 2), ()):
        asked = runner_factory(monkeypatch, lambda config, poisoned=poisoned: PoisonedRunner(
            load_model(config.checkpoint), poisoned))
        out = tmp_path / f"fp16-{len(poisoned)}.mkv"
        result = invoke(video, "-o", out, "--precision", "fp16", *args)
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(read_frames(out), expected)
        if poisoned:
            assert asked == ["fp16", "fp32"]
            assert "NaN or Inf values in half precision (an overflow) in frames 1, 5 (counted " \
                   "from 0): the windows holding them were computed again in FP32" \
                   in result.output
        else:
            assert asked == ["fp16"]  # made only when needed
            assert "NaN" not in result.output


def fp16_graphs_only(config):
    """What ``create_runner`` does with ``precision="fp32"`` and an FP16 ONNX folder."""
    raise BackendError(f"{config.checkpoint} holds fp16 graphs, not fp32")


@pytest.mark.parametrize("fp32, message", [
    (fp16_graphs_only,
     "FP16 overflowed, and these weights have no FP32 graphs to compute it again with: export "
     "FP32 graphs (hirn-export onnx --precision fp32) and run those"),
    (lambda config: PoisonedRunner(load_model(config.checkpoint), ()),
     "FP16 overflowed, and these weights have no FP32 graphs"),
    (lambda config: PoisonedRunner(load_model(config.checkpoint), (0,), "fp32"),
     "in FP32 too, so the weights are probably damaged")],
    ids=["fp16-onnx-folder", "fp16-engines", "nan-in-fp32-too"])
def test_half_precision_nan_without_a_finite_fp32_result_stops_the_run(fp32, message,
                                                                       small_input,
                                                                       tiny_checkpoint,
                                                                       monkeypatch,
                                                                       one_thread):
    """An FP16 ONNX folder has no FP32 graphs; FP16 engines ignore the precision asked;
    weights that overflow in FP32 as well are damaged."""
    runner_factory(monkeypatch, lambda config: PoisonedRunner(load_model(config.checkpoint),
                                                              (0,)), fp32)
    before = names(small_input.parent)
    result = invoke(small_input, "-o", small_input.parent / "out.mp4", "--checkpoint",
                    tiny_checkpoint, "--precision", "fp16", *THREADS)
    assert_clean_failure(result, "the model's output for frames 0-1 holds NaN or Inf values: "
                         + message, small_input.parent, before)
    assert "nothing was written" in result.output


# ---------------------------------------------------------------------------------------------
# 2. Damage the decoder conceals


def test_frames_decoded_with_errors_are_named_in_a_note(tmp_path, media, tiny_checkpoint,
                                                        one_thread):
    """A raw H.264 stream cut in half: FFmpeg conceals the damage in its last frame."""
    stream = media.write_video(tmp_path / "whole.h264", media.synthetic_frames(10))
    cut = tmp_path / "cut.h264"
    cut.write_bytes(stream.read_bytes()[: stream.stat().st_size // 2])
    result = invoke(cut, "-o", tmp_path / "out.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", *THREADS)
    assert result.exit_code == 0, result.output
    written = read_frames(tmp_path / "out.mkv")
    assert f"1 of {len(written)} frames were decoded with errors that FFmpeg concealed " \
           f"(frame {len(written) - 1}, counted from 0)" in result.output
    intact = media.write_video(tmp_path / "intact.h264", media.synthetic_frames(2))
    result = invoke(intact, "-o", tmp_path / "intact.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", *THREADS)
    assert result.exit_code == 0 and "decoded with errors" not in result.output


def test_strict_stops_at_frames_decoded_with_errors_and_writes_nothing(tmp_path, media,
                                                                       tiny_checkpoint,
                                                                       one_thread):
    stream = media.write_video(tmp_path / "whole.h264", media.synthetic_frames(10))
    cut = tmp_path / "cut.h264"
    cut.write_bytes(stream.read_bytes()[: stream.stat().st_size // 2])
    source = open_source(cut)
    count = sum(1 for _ in source)
    assert source.damaged == [count - 1]  # the last frame, concealed
    before = names(tmp_path)
    result = invoke(cut, "-o", tmp_path / "out.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", "--strict", *THREADS)
    assert_clean_failure(result, f"cut.h264: the decoder found errors in frame {count - 1} "
                                 f"(counted from 0) and concealed them", tmp_path, before)
    assert "nothing was written (drop --strict to upscale it anyway" in result.output
    intact = media.write_video(tmp_path / "intact.h264", media.synthetic_frames(2))
    result = invoke(intact, "-o", tmp_path / "intact.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", "--strict", *THREADS)
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------------------------------------
# 3. The memory advice for a huge window on a stream of unknown length


def test_plan_size_counts_what_the_plan_holds():
    for frames in [*range(1, 3 * 64), 1000, 1001, 1015]:
        plan = make_plan(frames)
        assert plan_size(frames) == (len(plan.computed()), len(plan.flows())), frames


def test_advice_for_a_window_of_100000_frames_answers_within_seconds():
    torch.manual_seed(0)
    runner = TorchRunner(HiRN(mid_channels=16, num_blocks=1))
    available = window_bytes(runner, 500, 180, 320)  # a few hundred frames fit
    began = time.perf_counter()
    with pytest.raises(WindowMemoryError, match="use --batch-size 1 --window") as error:
        check_window_fits(runner, 180, 320, 100_000, 4, 4, GOP_FRAMES, None,
                          available=available)
    assert time.perf_counter() - began < ADVICE_SECONDS
    window = int(str(error.value).split("--window ")[1].split(";")[0])
    # the longest window that fits, its backward maps recomputed or not
    need = [min(window_bytes(runner, w + 8, 180, 320, recompute_backward=r)
                for r in (None, RECOMPUTE_EVERY)) for w in (window, window + 1)]
    assert need[0] <= available < need[1]


def test_hirn_run_with_window_100000_on_a_raw_h264_stream_does_not_hang(tmp_path, media,
                                                                        tiny_checkpoint):
    stream = media.write_video(tmp_path / "in.h264", media.synthetic_frames(2))
    assert open_source(stream).frame_count is None  # a raw stream announces no length
    began = time.perf_counter()
    result = run_cli("hirn-run", str(stream), "-o", str(tmp_path / "out.mkv"), "--checkpoint",
                     str(tiny_checkpoint), "--codec", "ffv1", "--window", "100000", *THREADS,
                     timeout=SIGNAL_TIMEOUT_S)
    took = time.perf_counter() - began
    assert "Traceback" not in result.stderr
    if result.returncode == 1:  # the usual case: 100,008 frames of features do not fit
        assert "use --batch-size 1 --window" in result.stderr, result.stderr
    else:  # a machine with a few hundred GiB free runs the two frames
        assert result.returncode == 0, result.stderr
    assert took < SIGNAL_TIMEOUT_S / 2, took


def address_space_at_start(checkpoint: Path) -> int:
    """Bytes of address space a process holds once hirn-run's modules are imported and the
    model loaded (torch maps far more than it uses)."""
    code = ("import hirn.runtime.cli, hirn.runtime.pipeline, hirn.runtime.backends.torch_backend\n"
            "from hirn.train import load_model\n"
            f"load_model({str(checkpoint)!r})\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmPeak')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=SIGNAL_TIMEOUT_S)
    return int(result.stdout) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_memory_running_out_under_an_address_space_limit_is_one_error_line(tmp_path, media,
                                                                          tiny_checkpoint):
    """ulimit -v leaves room to start, not for the windows: torch's allocator, oneDNN or a
    decoder failing to allocate once gave a traceback."""
    video = media.write_video(tmp_path / "in.mkv", media.synthetic_frames(4, 256, 256),
                              codec="ffv1", pix_fmt="bgr0")
    limit = address_space_at_start(tiny_checkpoint) + ADDRESS_SPACE_MARGIN

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    before = names(tmp_path)
    result = subprocess.run([shutil.which("hirn-run"), str(video), "-o",
                             str(tmp_path / "x4.mkv"), "--checkpoint", str(tiny_checkpoint),
                             "--codec", "ffv1", *THREADS], capture_output=True, text=True,
                            preexec_fn=limited, timeout=SIGNAL_TIMEOUT_S)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Error: out of memory while upscaling" in result.stderr, result.stderr
    assert f"this process may map only {limit / 2**30:.2f} GiB (ulimit -v)" in result.stderr
    assert names(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 4. Batch outputs are trusted only when complete; outputs are synced before their rename


def test_a_batch_redoes_empty_and_truncated_outputs_and_skips_complete_ones(tmp_path, media,
                                                                           tiny_checkpoint):
    folder, out = tmp_path / "videos", tmp_path / "out"
    folder.mkdir()
    for k, name in enumerate(("a.mp4", "b.mkv", "c.mov")):
        media.write_video(folder / name, media.synthetic_frames(1, width=32, height=24,
                                                                seed=k))
    args = ["hirn-run", str(folder), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
            *THREADS]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "batch: 3 upscaled, 0 skipped" in first.stdout
    complete = (out / "c.mov").read_bytes()
    (out / "a.mp4").write_bytes(b"")  # what a crash before any sync can leave
    truncated = (out / "b.mkv").read_bytes()
    (out / "b.mkv").write_bytes(truncated[: len(truncated) // 2])

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "batch: 2 upscaled, 1 skipped (already complete), 0 failed" in again.stdout
    assert "a.mp4 is not a complete output of a.mp4" in again.stderr
    assert "b.mkv is not a complete output of b.mkv" in again.stderr
    for name in ("a.mp4", "b.mkv"):
        assert read_frames(out / name).shape == (1, 96, 128, 3)
    assert (out / "c.mov").read_bytes() == complete  # skipped, untouched
    assert json.loads(record_path(out / "b.mkv").read_text())["input"] == "b.mkv"


def test_an_output_is_synced_before_it_is_renamed_into_place(tmp_path, monkeypatch, media):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source, target):
        events.append(("rename", str(source)))
        real_replace(source, target)

    monkeypatch.setattr(video_writer.os, "fsync", fsync)
    monkeypatch.setattr(video_writer.os, "replace", replace)
    with open_sink(tmp_path / "out.mp4", width=64, height=48, fps=25) as sink:
        sink.write(media.synthetic_frames(1)[0])
    renamed = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renamed) == 1
    temp = events[renamed[0]][1]
    assert ("fsync", temp) in events[:renamed[0]]  # the data, before the name
    assert ("fsync", str(tmp_path)) in events[renamed[0]:]  # the rename itself


# ---------------------------------------------------------------------------------------------
# 6. Options and Ctrl-C that gave tracebacks


@pytest.mark.parametrize("fps, message", [("nan", "nan is not a frame rate"),
                                          ("inf", "inf is not a frame rate"),
                                          ("0.0001", "0.0001 frames/s is out of range")])
def test_frame_rates_that_are_not_usable_are_refused(fps, message, tmp_path, media,
                                                     tiny_checkpoint):
    frames = media.write_images(tmp_path / "frames", media.synthetic_frames(1))
    before = names(tmp_path)
    result = invoke(frames, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint,
                    "--fps", fps)
    assert_clean_failure(result, message, tmp_path, before, code=2)
    assert "Invalid value for '--fps'" in result.output


def test_ctrl_c_while_hirn_run_loads_exits_130_with_one_line(small_input, tiny_checkpoint):
    """Python's verbose mode names each module as it is imported: Ctrl-C comes while the
    modules after click are still loading."""
    process = start([small_input, "-o", small_input.parent / "out.mp4", "--checkpoint",
                     tiny_checkpoint], env={**os.environ, "PYTHONVERBOSE": "1"})
    wait_for(process, "import 'click'")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=SIGNAL_TIMEOUT_S)
    assert process.returncode == EXIT_INTERRUPTED, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    assert "interrupted (Ctrl-C)" in stderr
    assert names(small_input.parent) == ["in.mp4"]


# ---------------------------------------------------------------------------------------------
# 7. SIGHUP, timing lost to a PNG folder, and messages for people


def test_sighup_removes_the_partial_output_and_exits_129(calendar_small_mp4, tiny_checkpoint,
                                                         tmp_path):
    out = tmp_path / "out.mp4"
    process = start([calendar_small_mp4, "-o", out, "--checkpoint", tiny_checkpoint,
                     "--window", 1, "--overlap", 0, *THREADS])
    wait_for(process, "windows write")  # said when the model is about to run
    assert len(names(tmp_path)) == 1  # the hidden temporary, while it works
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=SIGNAL_TIMEOUT_S)
    assert process.returncode == EXIT_HUNG_UP, stderr
    assert "hung up (the terminal was closed)" in stderr and "Traceback" not in stderr
    assert names(tmp_path) == []


def write_vfr_video(path: Path, frames, stamps_ms) -> Path:
    """FFV1 in matroska with the frames at ``stamps_ms`` milliseconds."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        stream.codec_context.time_base = Fraction(1, 1000)
        for image, stamp in zip(frames, stamps_ms):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = stamp, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_variable_rate_video_written_as_pngs_gets_a_note(tmp_path, media, tiny_checkpoint,
                                                           one_thread):
    video = write_vfr_video(tmp_path / "vfr.mkv", media.synthetic_frames(3), (0, 40, 120))
    result = invoke(video, "-o", tmp_path / "frames", "--checkpoint", tiny_checkpoint,
                    *THREADS)
    assert result.exit_code == 0, result.output
    assert "a folder of PNGs keeps their order, not their timing" in result.output
    assert len(names(tmp_path / "frames")) == 3


def test_a_variable_rate_video_with_gaps_is_upscaled_whole_at_its_own_times(tmp_path, media,
                                                                          tiny_checkpoint,
                                                                          one_thread):
    """Frames 0, 1, 2, 5, 6 and 10 of 25 frames/s: duration x rate estimates 11 frames, which
    once refused the video as truncated after every window was computed."""
    stamps = (0, 40, 80, 200, 240, 400)
    video = write_vfr_video(tmp_path / "vfr.mkv", media.synthetic_frames(6), stamps)
    result = invoke(video, "-o", tmp_path / "x4.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", *THREADS)
    assert result.exit_code == 0, result.output
    assert "about 11 frames at 25 frames/s" in result.output  # an estimate, said as one
    assert "cut short" not in result.output
    with av.open(str(tmp_path / "x4.mkv")) as out:
        times = [round(frame.time * 1000) for frame in out.decode(video=0)]
    assert times == list(stamps)


def test_evenly_timed_frames_written_as_pngs_get_no_note(tmp_path, media):
    for step in (40, 33):  # 25 frames/s, and 29.97 in milliseconds (33 or 34 apart)
        folder = tmp_path / f"step{step}"
        with open_sink(folder, width=64, height=48, fps=Fraction(30000, 1001) if step == 33
                       else 25, time_base=Fraction(1, 1000)) as sink:
            for index, stamp in enumerate((0, 33, 67, 100) if step == 33 else (0, 40, 80)):
                sink.write(media.synthetic_frames(1, seed=index)[0], stamp)
        assert sink.notes == []


def test_messages_speak_of_options_and_name_a_folder_given_as_checkpoint(small_input,
                                                                         tiny_checkpoint):
    folder = small_input.parent
    (folder / "taken.mp4").write_bytes(b"keep me")
    (folder / "weights").mkdir()
    before = names(folder)
    result = invoke(small_input, "-o", folder / "taken.mp4", "--checkpoint", tiny_checkpoint)
    assert_clean_failure(result, "taken.mp4 already exists: pass --overwrite to replace it",
                         folder, before)
    assert "overwrite=True" not in result.output
    result = invoke(small_input, "-o", folder / "out.mp4", "--checkpoint", folder / "weights")
    assert_clean_failure(result, "weights is a directory, not a checkpoint file", folder,
                         before)
    assert "not found" not in result.output
    assert (folder / "taken.mp4").read_bytes() == b"keep me"


# ---------------------------------------------------------------------------------------------
# 5. JPEGs stored sideways, with an EXIF orientation


def sideways_jpeg(path: Path, image: np.ndarray, orientation: int = 6) -> Path:
    """``image`` (BGR) as a JPEG whose EXIF asks viewers to turn it (6: 90 degrees
    clockwise), the way phones store photos."""
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    tiff = (b"MM\0*" + struct.pack(">IH", 8, 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))
    app1 = b"\xff\xe1" + struct.pack(">H", 8 + len(tiff)) + b"Exif\0\0" + tiff
    data = data.tobytes()
    path.write_bytes(data[:2] + app1 + data[2:])
    return path


def test_jpegs_with_an_exif_orientation_are_turned_upright_with_a_note(tmp_path,
                                                                      tiny_checkpoint,
                                                                      one_thread):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(2):
        image = np.full((48, 64, 3), 40 * index, np.uint8)
        image[:8] = (0, 0, 255)  # a red band along the stored top
        sideways_jpeg(folder / f"{index}.jpg", image)
    frames = read_frames(folder)
    assert frames.shape == (2, 64, 48, 3)  # upright: portrait
    assert frames[:, :, -8:, 0].mean() > 200 > frames[:, :, :8, 0].mean() + 150  # band: right
    result = invoke(folder, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, *THREADS)
    assert result.exit_code == 0, result.output
    assert "JPEG images shown upright as their EXIF orientation asks (turned 90 degrees " \
           "clockwise)" in result.output
    assert read_frames(tmp_path / "out").shape == (2, 256, 192, 3)
