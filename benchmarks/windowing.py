"""Windows: peak memory against video length, and dB lost against whole-clip processing.

Memory: ``hirn-run`` upscales synthetic 64x64 videos of 50, 200 and 800 frames (a panning
textured pattern, H.264) with a fixed window, each run in a fresh process whose peak RSS the
kernel reports (``wait4``); the same videos of 50 and 200 frames in one window show what
windows save. Model: HiRN(mid_channels=16, num_blocks=1), seeded random weights (the decode
stage, which does not depend on the model size, dominates at this size).

Pipeline: the same videos (and one of 3200 frames) through the pipeline with a stand-in for
the model, in fresh processes: the streaming code alone. Allocator: the model alone on 12
same-size windows in one process, peak RSS after each.

Quality: the Vid4 calendar LR clip (41 frames, a 64x64 crop) through the published model
size with ``../shared/reference/hirn_random_seed1.pth`` (random weights: no trained
checkpoint exists here yet), whole clip against each window setting; PSNR of the windowed
output against the whole-clip output (both clamped to [0, 1]).

    python benchmarks/windowing.py [--part memory|pipeline|allocator|quality|all] [--threads 1]
                                   [--min-frames 16] [--settings 8:0,8:4,...]

Writes benchmarks/results/windowing.{json,md}; a part run alone keeps the other's results.
About 25 minutes for the memory part, 20 for quality, 3 for allocator and 1 for pipeline, on one
core of a loaded 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CALENDAR_LR, REFERENCE_WEIGHTS, RESULTS, load_frames, machine, write_results

from hirn.runtime.pipeline import DEFAULT_OVERLAP, DEFAULT_WINDOW
from hirn.runtime.windows import GOP_FRAMES

LENGTHS = (50, 200, 800)
WHOLE_LENGTHS = (50, 200)  # the same videos in one window, for contrast
PIPELINE_LENGTHS = (50, 200, 800, 3200)  # the pipeline alone, with a stand-in for the model
SIZE = 64
SETTINGS = ((8, 0), (8, 4), (16, 0), (16, 4), (24, 2), (24, 4), (32, 4))  # (window, overlap)
CROP = (40, 60, 64, 64)  # top, left, height, width of the calendar crop
TINY = {"mid_channels": 16, "num_blocks": 1}


def synthetic_video(path: Path, frames: int) -> Path:
    """A panning noise texture with a moving square: ``frames`` frames of 64x64, H.264."""
    import cv2

    from hirn.media.video import open_sink

    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE * 3, SIZE * 3, 3)), (0, 0), 1.5)
    canvas = np.clip(canvas, 0, 255).astype(np.uint8)
    with open_sink(path, width=SIZE, height=SIZE, fps=25) as sink:
        for t in range(frames):
            y, x = int(SIZE + 20 * math.sin(t / 9)), int(SIZE + 20 * math.cos(t / 13))
            frame = np.ascontiguousarray(canvas[y:y + SIZE, x:x + SIZE])
            cv2.rectangle(frame, (t % 48, 20), (t % 48 + 12, 32), (250, 250, 250), -1)
            sink.write(frame)
    return path


def run_cli(args: list[str]) -> dict:
    """Run hirn-run in a fresh process; its wall time and peak RSS (from the kernel)."""
    executable = shutil.which("hirn-run")
    start = time.perf_counter()
    process = subprocess.Popen([executable, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"hirn-run {' '.join(args)} failed:\n{err}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024,
            "summary": out.strip().splitlines()[-1]}


def memory_part(threads: int) -> dict:
    import torch

    from hirn.train import HiRN, save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        checkpoint = save_checkpoint(folder / "tiny.pth", HiRN(**TINY))
        for frames in LENGTHS:
            video = synthetic_video(folder / f"clip{frames}.mp4", frames)
            runs = [("windowed", DEFAULT_WINDOW, DEFAULT_OVERLAP)]
            if frames in WHOLE_LENGTHS:
                runs.append(("one window", frames, 0))
            for mode, window, overlap in runs:
                out = folder / f"out{frames}_{window}.mp4"
                result = run_cli([str(video), "-o", str(out), "--checkpoint", str(checkpoint),
                                  "--window", str(window), "--overlap", str(overlap),
                                  "--threads", str(threads), "--quiet"])
                row = {"frames": frames, "mode": mode, "window": window, "overlap": overlap,
                       **result, "frames_per_s": frames / result["seconds"]}
                print(row, flush=True)
                rows.append(row)
                out.unlink()
    return {"model": TINY, "size": f"{SIZE}x{SIZE}", "threads": threads, "rows": rows}


def _stand_in_run(video: Path, out: Path) -> None:
    """The pipeline with nearest-neighbour x4 in place of the model (run in a subprocess)."""
    from hirn.media.video import open_source
    from hirn.runtime import pipeline
    from hirn.runtime.pipeline import RunConfig, open_output, upscale

    pipeline.upscale_clip = lambda runner, frames, batch_size=4, keep=slice(None): (
        frames[keep].repeat(4, axis=2).repeat(4, axis=3))
    source, config = open_source(video), RunConfig(overwrite=True)
    with open_output(source, out, config) as sink:
        upscale(source, sink, None, config)


def pipeline_part() -> dict:
    """Peak RSS of the streaming pipeline alone (decode, windows, encode) against length."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for frames in PIPELINE_LENGTHS:
            video = synthetic_video(folder / f"clip{frames}.mp4", frames)
            process = subprocess.Popen([sys.executable, __file__, "--stand-in-run", str(video),
                                        str(folder / "out.mp4")])
            _, status, usage = os.wait4(process.pid, 0)
            if os.waitstatus_to_exitcode(status):
                raise SystemExit("the stand-in run failed")
            rows.append({"frames": frames, "peak_rss_mib": usage.ru_maxrss / 1024})
            print(rows[-1], flush=True)
    return {"size": f"{SIZE}x{SIZE}", "rows": rows}


def allocator_part(threads: int, windows: int = 12) -> dict:
    """Peak RSS after each of ``windows`` same-size windows through the model, in one process:
    whether memory creeps with the number of windows (it should not, beyond allocator noise)."""
    import resource

    import torch

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.runtime.driver import upscale_clip
    from hirn.train import HiRN

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    runner = TorchRunner(HiRN(**TINY).eval())
    rng = np.random.default_rng(0)
    peaks = []
    for _ in range(windows):
        upscale_clip(runner, rng.random((16, 3, SIZE, SIZE), dtype=np.float32))
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"window {len(peaks)}: peak RSS {peaks[-1]:.0f} MiB", flush=True)
    return {"window_frames": 16, "size": f"{SIZE}x{SIZE}", "peak_rss_mib": peaks}


def quality_part(threads: int, min_frames: int, settings) -> dict:
    import torch

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.runtime.driver import upscale_clip
    from hirn.runtime.windows import effective_overlap, plan_windows
    from hirn.train import load_model

    torch.set_num_threads(threads)
    top, left, height, width = CROP
    lr = load_frames(CALENDAR_LR)[:, top:top + height, left:left + width]
    clip = np.ascontiguousarray(lr.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    start = time.perf_counter()
    whole = np.clip(upscale_clip(runner, clip), 0, 1)
    whole_seconds = time.perf_counter() - start
    rows = []
    for window, overlap in settings:
        out = np.empty_like(whole)
        processed = 0
        start = time.perf_counter()
        for w in plan_windows(len(clip), window, overlap, min_frames):
            hr = upscale_clip(runner, clip[w.start:w.stop])
            out[w.keep_start:w.keep_stop] = np.clip(hr[w.keep], 0, 1)
            processed += w.size
        seconds = time.perf_counter() - start
        per_frame = [_psnr(a, b) for a, b in zip(out, whole)]
        finite = [p for p in per_frame if math.isfinite(p)]
        row = {"window": window, "overlap": overlap, "min_frames": min_frames,
               "effective_overlap": effective_overlap(window, overlap, min_frames),
               "psnr_db": _psnr(out, whole),
               "min_frame_psnr_db": min(finite) if finite else math.inf,
               "max_abs_8bit": float(np.abs(out - whole).max() * 255),
               "compute_factor": processed / len(clip), "seconds": seconds}
        print(row, flush=True)
        rows.append(row)
    return {"clip": f"calendar LR, frames 0-{len(clip) - 1}, crop {width}x{height} at "
                    f"({left}, {top})", "weights": REFERENCE_WEIGHTS.name,
            "whole_clip_seconds": whole_seconds, "threads": threads, "rows": rows}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def markdown(payload: dict) -> str:
    lines = ["# Windows: peak memory and quality", ""]
    memory = payload.get("memory")
    if memory:
        lines += [f"`hirn-run` on synthetic {memory['size']} H.264 videos, "
                  f"HiRN(mid_channels={memory['model']['mid_channels']}, "
                  f"num_blocks={memory['model']['num_blocks']}), {memory['threads']} thread(s); "
                  "peak RSS of each run's own process (`wait4`).", "",
                  "| frames | mode | window + overlap | peak RSS (MiB) | s | frames/s |",
                  "| ---: | --- | --- | ---: | ---: | ---: |"]
        for r in memory["rows"]:
            lines.append(f"| {r['frames']} | {r['mode']} | {r['window']} + 2 x {r['overlap']} "
                         f"| {r['peak_rss_mib']:.0f} | {r['seconds']:.0f} "
                         f"| {r['frames_per_s']:.2f} |")
        whole = {r["frames"]: r["peak_rss_mib"] for r in memory["rows"]
                 if r["mode"] == "one window"}
        if len(whole) >= 2:
            (a, ra), (b, rb) = sorted(whole.items())[:2]
            pixels = int(memory["size"].split("x")[0]) * int(memory["size"].split("x")[1])
            per_frame = (rb - ra) * 2**20 / (b - a) / pixels
            lines += ["", f"One window over the whole video costs {per_frame:.0f} bytes per LR "
                      f"pixel for each frame ({a} -> {b} frames) with 16 channels. The "
                      "published model's features have 64 channels: 4 feature maps x 48 "
                      "channels x 4 bytes = 768 bytes more, about 1.5 KiB per LR pixel and "
                      "frame of a window; measured with that model: 1.5-1.6 KiB "
                      "(results/window_memory.md)."]
        lines.append("")
    alone = payload.get("pipeline")
    if alone:
        sizes = ", ".join(f"{r['peak_rss_mib']:.0f} MiB at {r['frames']} frames"
                          for r in alone["rows"])
        lines += [f"The pipeline alone (decode, windows, encode; nearest-neighbour x4 standing "
                  f"in for the model), same {alone['size']} videos: peak RSS {sizes}.", ""]
    loop = payload.get("allocator")
    if loop:
        peaks = loop["peak_rss_mib"]
        lines += [f"The model alone on {len(peaks)} {loop['window_frames']}-frame windows of "
                  f"{loop['size']} random frames in a row, in one process: peak RSS after each "
                  f"window {', '.join(f'{p:.0f}' for p in peaks)} MiB. The allocator's peak "
                  "creeps over the first windows and then settles: this, not the number of "
                  "frames, is the small rise of the windowed runs with the model.", ""]
    quality = payload.get("quality")
    if quality:
        lines += [f"Windowed vs whole-clip output: {quality['clip']}, weights "
                  f"`{quality['weights']}` (published model size, random weights: no trained "
                  f"checkpoint exists yet; a trained model propagates further, so treat these "
                  f"as indicative). Whole clip: {quality['whole_clip_seconds']:.0f} s. "
                  "PSNR in dB of the windowed output against the whole-clip output "
                  "(inf = identical); compute factor = frames run / frames written.", "",
                  "| min frames | window | overlap (effective) | PSNR vs whole (dB) "
                  "| worst frame (dB) | max abs (8-bit levels) | compute factor |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sorted(quality["rows"], key=lambda r: (r["min_frames"], r["window"],
                                                        r["overlap"])):
            lines.append(f"| {r['min_frames']} | {r['window']} | {r['overlap']} "
                         f"({r.get('effective_overlap', r['overlap'])}) | {r['psnr_db']:.2f} "
                         f"| {r['min_frame_psnr_db']:.2f} | {r['max_abs_8bit']:.2f} "
                         f"| {r['compute_factor']:.2f} |")
        lines += ["", "Min frames 1: windows cut by window and overlap alone. Min frames 16 "
                  "(what hirn-run does): every window reads at least 16 frames where the video "
                  "has them, so that HiRN's group branch keeps its 16-frame groups (clips "
                  "shorter than 16 frames get 7-frame groups: a different computation). The "
                  "worst frames of the first rows come from such short windows (the last "
                  "one).", ""]
    lines.append(f"Defaults of hirn-run: window {DEFAULT_WINDOW}, overlap {DEFAULT_OVERLAP}. "
                 f"Machine: {payload['machine']}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["memory", "pipeline", "allocator", "quality", "all"],
                        default="all")
    parser.add_argument("--stand-in-run", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-frames", type=int, default=GOP_FRAMES,
                        help="the windows' minimum length (hirn-run: 16; 1: none)")
    parser.add_argument("--settings", default=",".join(f"{w}:{o}" for w, o in SETTINGS),
                        help="window:overlap pairs for the quality part")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite the Markdown from the JSON, measuring nothing")
    args = parser.parse_args()
    settings = [tuple(map(int, pair.split(":"))) for pair in args.settings.split(",")]
    path = RESULTS / "windowing.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    if args.stand_in_run:
        _stand_in_run(*args.stand_in_run)
        return
    if args.markdown_only:
        write_results("windowing", payload, markdown(payload))
        return
    if args.part in ("quality", "all"):
        if not REFERENCE_WEIGHTS.exists() or not CALENDAR_LR.exists():
            sys.exit(f"{REFERENCE_WEIGHTS} or {CALENDAR_LR} is absent: ../shared is needed")
        quality = quality_part(args.threads, args.min_frames, settings)
        kept = [r for r in payload.get("quality", {}).get("rows", [])
                if r.get("min_frames", 1) != args.min_frames]  # other minimums stay
        quality["rows"] = kept + quality["rows"]
        payload["quality"] = quality
    if args.part in ("memory", "all"):
        payload["memory"] = memory_part(args.threads)
    if args.part in ("pipeline", "all"):
        payload["pipeline"] = pipeline_part()
    if args.part in ("allocator", "all"):
        payload["allocator"] = allocator_part(args.threads)
    payload["machine"] = machine()
    payload["load_average"] = os.getloadavg()[0]
    write_results("windowing", payload, markdown(payload))


if __name__ == "__main__":
    main()
