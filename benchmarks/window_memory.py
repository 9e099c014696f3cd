"""Memory of one window with the published model size, against the bound hirn-run checks.

    python benchmarks/window_memory.py [--size 96] [--frames 16,32]

Each window (random LR frames of SIZE x SIZE, windows of 16 and 32 frames that write all
but 4 context frames on each side) runs in a fresh process through the runtime driver
(torch backend, CPU, reference weights); the kernel reports its peak RSS (``wait4``). The
growth from one window length to the next, per frame and LR pixel, is what a window costs;
``hirn.runtime.memory.window_bytes`` is the lower bound ``hirn-run`` checks against the
free memory before it starts. Writes ``results/window_memory.{json,md}``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import click
from common import REFERENCE_WEIGHTS, machine, write_results

from hirn.runtime.memory import window_bytes

BATCH = 4  # frames per decode call, hirn-run's default


def _one_window(frames: int, size: int) -> None:
    """Run in the child: one window of ``frames`` frames, then exit."""
    import numpy as np

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.runtime.driver import upscale_clip
    from hirn.train import load_model

    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    clip = np.random.default_rng(0).random((frames, 3, size, size), dtype=np.float32)
    if frames:
        upscale_clip(runner, clip, batch_size=BATCH, keep=slice(4, frames - 4))


def _peak_mib(frames: int, size: int) -> float:
    process = subprocess.Popen([sys.executable, __file__, "--child", str(frames),
                                "--size", str(size)])
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"the {frames}-frame window failed")
    return usage.ru_maxrss / 1024


@click.command()
@click.option("--size", default=96, show_default=True, help="LR frames are SIZE x SIZE")
@click.option("--frames", default="16,32", show_default=True, help="window lengths (frames read)")
@click.option("--child", type=int, hidden=True)
def main(size: int, frames: str, child: int | None) -> None:
    if child is not None:
        _one_window(child, size)
        return
    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import load_model

    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    lengths = [int(f) for f in frames.split(",")]
    rows = [{"frames": 0, "peak_rss_mib": _peak_mib(0, size), "bound_mib": 0.0}]
    for n in lengths:
        rows.append({"frames": n, "peak_rss_mib": _peak_mib(n, size),
                     "bound_mib": window_bytes(runner, n, size, size, BATCH) / 2**20})
        print(rows[-1], flush=True)
    first, last = rows[1], rows[-1]
    pixels = size * size
    measured = (last["peak_rss_mib"] - first["peak_rss_mib"]) * 2**20 / (
        last["frames"] - first["frames"]) / pixels
    bound = (last["bound_mib"] - first["bound_mib"]) * 2**20 / (
        last["frames"] - first["frames"]) / pixels
    payload = {"size": size, "rows": rows, "measured_bytes_per_pixel_frame": measured,
               "bound_bytes_per_pixel_frame": bound, "machine": machine()}
    lines = ["# One window's memory (published model size, CPU)", "",
             f"Random {size}x{size} LR frames, reference weights, torch backend, one window "
             "per fresh process (peak RSS from the kernel); 0 frames = the process with the "
             "model loaded. Bound: `hirn.runtime.memory.window_bytes`, what hirn-run checks "
             "against the free memory.", "",
             "| frames read | peak RSS MiB | bound MiB (held maps + one decode batch of 4) |",
             "| ---: | ---: | ---: |"]
    lines += [f"| {r['frames']} | {r['peak_rss_mib']:.0f} | {r['bound_mib']:.0f} |"
              for r in rows]
    lines += ["", f"Each extra frame of a window costs {measured:.0f} bytes per LR pixel "
              f"(measured, {first['frames']} -> {last['frames']} frames); the bound counts "
              f"{bound:.0f}. Machine: {machine()}"]
    write_results("window_memory", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
