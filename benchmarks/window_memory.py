"""Memory of one window with the published model size, before and after the liveness order,
against the bound hirn-run checks.

    python benchmarks/window_memory.py [--size 96] [--frames 32,64]
    python benchmarks/window_memory.py --size 540x960 --frames 4 --context 0 --batch 1 \
        --orders liveness --name window_memory_540p

Each window (random LR frames of SIZE x SIZE, windows that write all but 4 context frames
on each side) runs in a fresh process through the runtime driver (torch backend, CPU,
reference weights); the kernel reports its peak RSS (``wait4``), less that of a process
that only loaded the model. Orders: ``plan`` walks the plan in its own order keeping every
map (the driver before :mod:`hirn.core.liveness`), ``liveness`` is ``upscale_clip`` (its
FP32 output returned), ``samples`` keeps each decoded batch as 8-bit samples (what
``hirn-run`` does), ``recomputed`` does that with the backward maps recomputed from two
kept in 16 frames (what ``hirn-run`` does when a window does not fit otherwise). The growth
from one window length to the next, per frame and LR pixel, is what a window frame costs;
``hirn.runtime.memory.window_bytes`` is the bound ``hirn-run`` checks against the free
memory before it starts. The seconds each window took are given too (one process each, so
only their ratios mean anything). Writes ``results/window_memory.{json,md}``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
from common import REFERENCE_WEIGHTS, machine, write_results

from hirn.runtime.memory import RECOMPUTE_EVERY, window_bytes

ORDERS = ("plan", "liveness", "samples", "recomputed")
# what hirn-run runs, so what its bound is for: order -> recompute_backward
BOUNDED = {"samples": None, "recomputed": RECOMPUTE_EVERY}
# glibc raises its mmap threshold as large blocks are freed; maps of a few MB then come from
# a fragmenting heap and peak RSS moves by tens of percent from run to run. A fixed threshold
# returns every map of 1 MiB or more on free: the peak is the window's own.
MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _keep(frames: int, context: int) -> slice:
    return slice(context, frames - context)


def _size(text: str) -> tuple[int, int]:
    """``96`` (square) or ``540x960`` (height x width), LR pixels."""
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def _one_window(order: str, frames: int, size: tuple[int, int], batch: int,
                context: int) -> None:
    """Run in the child: one window of ``frames`` frames, then print this process's peak
    resident memory in KiB and the seconds the window took. The peak is reset first: the
    kernel's ``ru_maxrss`` keeps the parent's across fork and exec."""
    import time

    import numpy as np

    Path("/proc/self/clear_refs").write_text("5")

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import load_model

    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    clip = np.random.default_rng(0).random((frames, 3, *size), dtype=np.float32)
    start = time.perf_counter()
    if frames:
        _run(runner, clip, order, batch, _keep(frames, context))
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    print(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1],
          seconds)


def _run(runner, clip, order: str, batch: int, keep: slice) -> None:
    from hirn.runtime.driver import SampleCollector, upscale_clip

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from plan_order import upscale_clip_in_plan_order  # the tests' oracle

    if order == "plan":
        upscale_clip_in_plan_order(runner, clip, batch, keep)
    elif order == "liveness":
        upscale_clip(runner, clip, batch, keep)
    else:
        samples = SampleCollector(len(range(len(clip))[keep]), *clip.shape[-2:])
        upscale_clip(runner, clip, batch, keep, on_output=samples.put,
                     recompute_backward=BOUNDED[order])


def _peak_mib(order: str, frames: int, size: tuple[int, int], batch: int,
              context: int) -> tuple[float, float]:
    """(peak MiB, seconds) of one window in a fresh process."""
    child = subprocess.run([sys.executable, __file__, "--child", order, str(frames),
                            "--size", f"{size[0]}x{size[1]}", "--batch", str(batch),
                            "--context", str(context)], stdout=subprocess.PIPE, text=True,
                           env=MALLOC_ENV)
    if child.returncode:
        raise SystemExit(f"the {frames}-frame window ({order}) failed")
    peak, seconds = child.stdout.split()[-2:]
    return int(peak) / 1024, float(seconds)


def _per_pixel_frame(rows: list[dict], key: str, pixels: int) -> float:
    first, last = rows[0], rows[-1]
    return (last[key] - first[key]) * 2**20 / (last["frames"] - first["frames"]) / pixels


@click.command()
@click.option("--size", default="96", show_default=True,
              help="LR frames: SIZE (square) or HxW")
@click.option("--batch", default=4, show_default=True,
              help="frames per call of the batchable graphs (hirn-run's default: 4)")
@click.option("--context", default=4, show_default=True,
              help="frames read but not written on each side of the window")
@click.option("--name", default="window_memory", show_default=True,
              help="results/NAME.{json,md}")
@click.option("--frames", default="32,64", show_default=True, help="window lengths (frames read)")
@click.option("--orders", default=",".join(ORDERS), show_default=True,
              help="orders to measure, of " + ", ".join(ORDERS))
@click.option("--child", nargs=2, hidden=True)
def main(size: str, batch: int, context: int, name: str, frames: str, orders: str,
         child: tuple[str, str] | None) -> None:
    size = _size(size)
    if child:
        _one_window(child[0], int(child[1]), size, batch, context)
        return
    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import load_model

    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    lengths = [int(f) for f in frames.split(",")]
    height, width = size
    baseline = _peak_mib("plan", 0, size, batch, context)[0]
    half = SimpleNamespace(device="cpu", mid_channels=runner.mid_channels, element_size=2)
    rows = []
    chosen = [o for o in ORDERS if o in orders.split(",")]
    for order in chosen:
        for n in lengths:
            bounds = [window_bytes(r, n, height, width, batch, _keep(n, context),
                                   BOUNDED[order]) / 2**20 if order in BOUNDED else None
                      for r in (runner, half)]
            peak, seconds = _peak_mib(order, n, size, batch, context)
            rows.append({"order": order, "frames": n, "peak_mib": peak - baseline,
                         "seconds": seconds, "bound_mib": bounds[0],
                         "bound_half_mib": bounds[1]})
            print(rows[-1], flush=True)
    pixels = height * width
    growth = len(lengths) > 1

    def of(order: str) -> list[dict]:
        return [r for r in rows if r["order"] == order]

    per_frame = ({o: _per_pixel_frame(of(o), "peak_mib", pixels) for o in chosen}
                 if growth else {})
    bound_per_frame = {o: {key: _per_pixel_frame(of(o), key, pixels)
                           for key in ("bound_mib", "bound_half_mib")}
                       for o in chosen if o in BOUNDED} if growth else {}
    slowdown = ({n: next(r["seconds"] for r in of("recomputed") if r["frames"] == n)
                 / next(r["seconds"] for r in of("samples") if r["frames"] == n)
                 for n in lengths} if {"samples", "recomputed"} <= set(chosen) else {})
    payload = {"size": [height, width], "batch": batch, "context": context,
               "baseline_mib": baseline, "rows": rows,
               "measured_bytes_per_pixel_frame": per_frame,
               "bound_bytes_per_pixel_frame": bound_per_frame,
               "bound_over_measured": {o: [r["bound_mib"] / r["peak_mib"] for r in of(o)]
                                       for o in chosen if o in BOUNDED},
               "recomputed_over_samples_seconds": slowdown,
               "machine": machine()}
    lines = ["# One window's memory (published model size, CPU)", "",
             f"Random {width}x{height} LR frames, reference weights, torch backend FP32, "
             f"batches of {batch}, {context} context frames on each side; one window per fresh "
             f"process: its peak RSS (VmHWM, reset at its start) less the {baseline:.0f} MiB of"
             " a process with the model loaded (glibc's mmap threshold fixed at 1 MiB). "
             "`plan`: the plan's own order keeping every map (before); `liveness`: "
             "`upscale_clip`, its FP32 output returned; `samples`: each decoded batch kept as "
             "8-bit samples (what hirn-run does); `recomputed`: the same with the backward "
             f"maps recomputed from two kept in {RECOMPUTE_EVERY} frames (what hirn-run does "
             "when a window does not fit otherwise). Bound: `hirn.runtime.memory.window_bytes`"
             ", what hirn-run checks against the free memory; FP16 bound: the same with feature"
             " maps in 2 bytes (flows, frames and outputs stay FP32), for half-precision runs.",
             "",
             "| order | frames read | peak MiB | seconds | bound MiB | bound / peak | "
             "FP16 bound MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bound = "" if r["bound_mib"] is None else f"{r['bound_mib']:.0f}"
        ratio = "" if r["bound_mib"] is None else f"{r['bound_mib'] / r['peak_mib']:.2f}"
        bound_half = "" if r["bound_half_mib"] is None else f"{r['bound_half_mib']:.0f}"
        lines.append(f"| {r['order']} | {r['frames']} | {r['peak_mib']:.0f} | "
                     f"{r['seconds']:.0f} | {bound} | {ratio} | {bound_half} |")
    if per_frame:
        lines += ["", "Bytes per LR pixel per extra window frame (growth between the two "
                  "lengths), measured: " + ", ".join(f"{o} {per_frame[o]:.0f}" for o in chosen)
                  + "; the bound counts "
                  + ", ".join(f"{b['bound_mib']:.0f} ({o}; {b['bound_half_mib']:.0f} with FP16 "
                              f"features)" for o, b in bound_per_frame.items()) + "."
                  + (f" Before / after: {per_frame['plan'] / per_frame['recomputed']:.1f}x "
                     f"(plan / recomputed), {per_frame['plan'] / per_frame['samples']:.1f}x "
                     f"(plan / samples)."
                     if {"plan", "samples", "recomputed"} <= set(per_frame) else "")]
    if slowdown:
        lines += ["", "Time of `recomputed` over `samples` (the cost of recomputing): "
                  + ", ".join(f"{s:.2f}x at {n} frames" for n, s in slowdown.items()) + "."]
    lines += ["", "Half precision cannot run on this CPU (the torch backend's FP16 needs CUDA, "
              "bfloat16 a CPU with avx512_bf16): its figures are the bound only.",
              "", f"Machine: {machine()}"]
    write_results(name, payload, "\n".join(lines))


if __name__ == "__main__":
    main()
