"""The runtime's overhead around the model: decode, encode and scheduling, as a share of time.

The Vid4 calendar LR frames (180x144) as an H.264 MP4 go through ``hirn-run``'s pipeline
(``hirn.runtime.pipeline.upscale``: decode thread, windows, driver, encode thread, H.264 out)
on the CPU with the torch backend. Time inside ``runner.run`` (the model's graphs) is the
model; everything else of the run's wall time is overhead: decoding, padding, the driver's
scheduling and array handling, conversion to 8 bits, encoding and muxing, and waiting on the
queues. Decode and encode run in threads, so their own times (also reported) overlap the model.
The whole ``hirn-run`` process is timed too, startup (imports, model load) included.

Models: HiRN(mid_channels=16, num_blocks=1) (the cheapest model, so the largest overhead
share) and the published size with ``../shared/reference/hirn_random_seed1.pth``.

    python benchmarks/driver_overhead.py [--frames 12] [--full-frames 4] [--threads 1]

Writes benchmarks/results/driver_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import CALENDAR_LR, REFERENCE_WEIGHTS, load_frames, machine, write_results

from hirn.media.video import open_sink, open_source
from hirn.runtime.backends import create_runner
from hirn.runtime.pipeline import RunConfig, open_output, upscale

GOAL = 0.10  # overhead share to stay below


class Timed:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, function):
        self.function, self.seconds, self.calls = function, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


class TimedSource:
    """A source whose iteration (decoding, conversion to RGB) is timed."""

    def __init__(self, source):
        self.source, self.seconds = source, 0.0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __iter__(self):
        frames = iter(self.source)
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            self.seconds += time.perf_counter() - start
            if frame is None:
                return
            yield frame


def measure(video: Path, checkpoint: Path, threads: int, out: Path) -> dict:
    """One in-process run with every stage timed."""
    from hirn.runtime.backends import BackendConfig

    runner = create_runner(BackendConfig(checkpoint=checkpoint, threads=threads))
    runner.run = Timed(runner.run)  # the driver calls runner.run for every graph
    config = RunConfig(overwrite=True)
    source = open_source(video)
    timed_source = TimedSource(source)
    start = time.perf_counter()
    with open_output(source, out, config) as sink:
        sink.write = Timed(sink.write)
        stats = upscale(timed_source, sink, runner, config)
        closing = time.perf_counter()
    close_seconds = time.perf_counter() - closing
    wall = time.perf_counter() - start
    model = runner.run.seconds
    return {"frames": stats.frames, "wall_s": wall, "model_s": model,
            "overhead_s": wall - model, "overhead_share": (wall - model) / wall,
            "graph_calls": runner.run.calls,
            "driver_and_conversion_s": stats.model_seconds - model,
            "decode_thread_s": timed_source.seconds,
            "encode_thread_s": sink.write.seconds + close_seconds,
            "ms_per_frame_overhead": 1000 * (wall - model) / stats.frames}


def process_time(video: Path, checkpoint: Path, threads: int, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([shutil.which("hirn-run"), str(video), "-o", str(out), "--checkpoint",
                    str(checkpoint), "--threads", str(threads), "--overwrite", "--quiet"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def markdown(payload: dict) -> str:
    lines = ["# Runtime overhead around the model (CPU)", "",
             f"{payload['input']}; H.264 (CRF 18) out through `hirn-run`'s pipeline, torch "
             f"backend, {payload['threads']} thread(s), default windows. Overhead = wall time "
             "of the run minus time inside `runner.run`; decode and encode threads overlap the "
             f"model, so their own times do not add up to it. Goal: below {GOAL:.0%}.", "",
             "| model | frames | wall s | in model s | overhead s | overhead share | ms/frame "
             "overhead | driver + conversion s | decode thread s | encode thread s "
             "| whole hirn-run process s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in payload["rows"]:
        process = f"{r['process_s']:.1f}" if "process_s" in r else "-"
        lines.append(f"| {r['model']} | {r['frames']} | {r['wall_s']:.1f} | {r['model_s']:.1f} "
                     f"| {r['overhead_s']:.2f} | {r['overhead_share']:.1%} "
                     f"| {r['ms_per_frame_overhead']:.0f} | {r['driver_and_conversion_s']:.2f} "
                     f"| {r['decode_thread_s']:.2f} | {r['encode_thread_s']:.2f} "
                     f"| {process} |")
    lines += ["", "The whole process adds startup (imports, reading the checkpoint) once per "
              f"run. Machine: {payload['machine']}; load average {payload['load_average']:.1f} "
              "(a shared machine)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="frames for the small model")
    parser.add_argument("--full-frames", type=int, default=4,
                        help="frames for the published size (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from hirn.train import HiRN, save_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        tiny = save_checkpoint(folder / "tiny.pth", HiRN(mid_channels=16, num_blocks=1))
        models = [("HiRN 16 ch, 1 block", tiny, args.frames)]
        if args.full_frames and REFERENCE_WEIGHTS.exists():
            models.append(("HiRN 64 ch, 7 blocks", REFERENCE_WEIGHTS, args.full_frames))
        for name, checkpoint, count in models:
            frames = load_frames(CALENDAR_LR, count)
            video = folder / f"calendar{count}.mp4"
            with open_sink(video, width=frames.shape[2], height=frames.shape[1], fps=25,
                           crf=18, overwrite=True) as sink:
                for image in frames:
                    sink.write(image)
            row = {"model": name, **measure(video, checkpoint, args.threads,
                                            folder / "out.mp4")}
            if checkpoint == tiny:  # the process adds the same startup for any model
                row["process_s"] = process_time(video, checkpoint, args.threads,
                                                folder / "out.mp4")
            print(row, flush=True)
            rows.append(row)
    payload = {"input": f"Vid4 calendar LR ({frames.shape[2]}x{frames.shape[1]})",
               "threads": args.threads, "goal": GOAL, "rows": rows, "machine": machine(),
               "load_average": os.getloadavg()[0]}
    write_results("driver_overhead", payload, markdown(payload))


if __name__ == "__main__":
    main()
