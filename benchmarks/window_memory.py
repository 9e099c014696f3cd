"""Memory of one window with the published model size, before and after the liveness order,
against the bound hirn-run checks.

    python benchmarks/window_memory.py [--size 96] [--frames 16,32]

Each window (random LR frames of SIZE x SIZE, windows that write all but 4 context frames
on each side) runs in a fresh process through the runtime driver (torch backend, CPU,
reference weights); the kernel reports its peak RSS (``wait4``), less that of a process
that only loaded the model. Orders: ``plan`` walks the plan in its own order keeping every
map (the driver before :mod:`hirn.core.liveness`), ``liveness`` is ``upscale_clip`` (its
output returned), ``streamed`` hands each decoded batch on (``on_output``) instead of
holding the window's output. The growth from one window length to the next, per frame and
LR pixel, is what a window frame costs; ``hirn.runtime.memory.window_bytes`` is the bound
``hirn-run`` checks against the free memory before it starts. Writes
``results/window_memory.{json,md}``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import click
from common import REFERENCE_WEIGHTS, machine, write_results

from hirn.runtime.memory import window_bytes

BATCH = 4  # frames per batchable call, hirn-run's default
CONTEXT = 4  # frames read but not written on each side
ORDERS = ("plan", "liveness", "streamed")


def _keep(frames: int) -> slice:
    return slice(CONTEXT, frames - CONTEXT)


def _one_window(order: str, frames: int, size: int) -> None:
    """Run in the child: one window of ``frames`` frames, then exit."""
    import numpy as np

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.runtime.driver import upscale_clip, upscale_clip_in_plan_order
    from hirn.train import load_model

    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    clip = np.random.default_rng(0).random((frames, 3, size, size), dtype=np.float32)
    if not frames:
        return
    if order == "plan":
        upscale_clip_in_plan_order(runner, clip, BATCH, _keep(frames))
    elif order == "liveness":
        upscale_clip(runner, clip, BATCH, _keep(frames))
    else:
        upscale_clip(runner, clip, BATCH, _keep(frames), on_output=lambda i, hr: None)


def _peak_mib(order: str, frames: int, size: int) -> float:
    process = subprocess.Popen([sys.executable, __file__, "--child", order, str(frames),
                                "--size", str(size)])
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"the {frames}-frame window ({order}) failed")
    return usage.ru_maxrss / 1024


def _per_pixel_frame(rows: list[dict], key: str, pixels: int) -> float:
    first, last = rows[0], rows[-1]
    return (last[key] - first[key]) * 2**20 / (last["frames"] - first["frames"]) / pixels


@click.command()
@click.option("--size", default=96, show_default=True, help="LR frames are SIZE x SIZE")
@click.option("--frames", default="16,32", show_default=True, help="window lengths (frames read)")
@click.option("--orders", default=",".join(ORDERS), show_default=True,
              help="orders to measure, of " + ", ".join(ORDERS))
@click.option("--child", nargs=2, hidden=True)
def main(size: int, frames: str, orders: str, child: tuple[str, str] | None) -> None:
    if child:
        _one_window(child[0], int(child[1]), size)
        return
    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import load_model

    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    lengths = [int(f) for f in frames.split(",")]
    baseline = _peak_mib("plan", 0, size)
    rows = []
    chosen = [o for o in ORDERS if o in orders.split(",")]
    for order in chosen:
        for n in lengths:
            bound = (window_bytes(runner, n, size, size, BATCH, _keep(n)) / 2**20
                     if order == "liveness" else None)
            rows.append({"order": order, "frames": n,
                         "peak_mib": _peak_mib(order, n, size) - baseline, "bound_mib": bound})
            print(rows[-1], flush=True)
    pixels = size * size
    per_frame = {o: _per_pixel_frame([r for r in rows if r["order"] == o], "peak_mib", pixels)
                 for o in chosen}
    live = [r for r in rows if r["order"] == "liveness"]
    bound_per_frame = _per_pixel_frame(live, "bound_mib", pixels)
    payload = {"size": size, "batch": BATCH, "baseline_mib": baseline, "rows": rows,
               "measured_bytes_per_pixel_frame": per_frame,
               "bound_bytes_per_pixel_frame": bound_per_frame,
               "bound_over_measured": [r["bound_mib"] / r["peak_mib"] for r in live],
               "machine": machine()}
    lines = ["# One window's memory (published model size, CPU)", "",
             f"Random {size}x{size} LR frames, reference weights, torch backend FP32, batches "
             f"of {BATCH}, {CONTEXT} context frames on each side; one window per fresh process: "
             f"peak RSS from the kernel less the {baseline:.0f} MiB of a process with the model "
             "loaded. `plan`: the plan's own order keeping every map (before); `liveness`: "
             "`upscale_clip` (after), its output returned; `streamed`: each decoded batch "
             "handed on. Bound: `hirn.runtime.memory.window_bytes`, what hirn-run checks "
             "against the free memory.", "",
             "| order | frames read | peak MiB | bound MiB | bound / peak |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bound = "" if r["bound_mib"] is None else f"{r['bound_mib']:.0f}"
        ratio = "" if r["bound_mib"] is None else f"{r['bound_mib'] / r['peak_mib']:.2f}"
        lines.append(f"| {r['order']} | {r['frames']} | {r['peak_mib']:.0f} | {bound} | "
                     f"{ratio} |")
    lines += ["", "Bytes per LR pixel per extra window frame (growth between the two lengths): "
              + ", ".join(f"{o} {per_frame[o]:.0f}" for o in chosen)
              + f"; the bound counts {bound_per_frame:.0f} (liveness)."
              + (f" Before / after: {per_frame['plan'] / per_frame['liveness']:.1f}x."
                 if "plan" in per_frame else ""),
              "", "Half precision cannot run on this CPU (the torch backend's FP16 needs CUDA); "
              "its bound holds feature maps in 2 bytes (flows, frames and outputs stay FP32).",
              "", f"Machine: AMD EPYC, 2 shared cores, no avx512_bf16; {machine()}"]
    write_results("window_memory", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
