"""The torch backend's options on a real clip: FP16, torch.compile, CUDA graphs.

    python benchmarks/torch_backend.py [--frames 16] [--device cpu|cuda] [--variants ...]

Vid4 calendar LR (180x144), published model size with the reference weights, through the
runtime driver (batch 4). Each variant runs the clip twice in this process: the first run
includes compiling or capturing, the second is the steady speed. Ratios and PSNR are
against eager FP32 run in the same process. Writes ``results/torch_backend_{device}.{json,md}``.
On the CPU: eager and compiled FP32 (FP16 and CUDA graphs need CUDA).
"""

from __future__ import annotations

import time

import click
import numpy as np
import torch
from common import CALENDAR_LR, REFERENCE_WEIGHTS, load_frames, machine, peak_rss_mib, write_results

from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import load_model

# name -> (precision, compile_steps, cuda_graphs)
VARIANTS = {
    "eager fp32": ("fp32", False, False),
    "compiled fp32": ("fp32", True, False),
    "eager fp16": ("fp16", False, False),
    "compiled fp16": ("fp16", True, False),
    "cuda graphs fp32": ("fp32", True, True),
    "cuda graphs fp16": ("fp16", True, True),
}
CUDA_ONLY = ("eager fp16", "compiled fp16", "cuda graphs fp32", "cuda graphs fp16")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def _timed_clip(runner: TorchRunner, clip: np.ndarray) -> tuple[float, np.ndarray]:
    if runner.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = upscale_clip(runner, clip, batch_size=4)  # ends with a copy to the host
    return time.perf_counter() - start, out


@click.command()
@click.option("--frames", default=16, show_default=True, help="calendar frames per clip")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu",
              show_default=True)
@click.option("--variants", default=None,
              help="comma-separated subset of: " + ", ".join(VARIANTS))
def main(frames: int, device: str, variants: str | None) -> None:
    names = variants.split(",") if variants else [
        n for n in VARIANTS if device.startswith("cuda") or n not in CUDA_ONLY]
    clip = load_frames(CALENDAR_LR, frames).transpose(0, 3, 1, 2).astype(np.float32) / 255
    model = load_model(REFERENCE_WEIGHTS)
    rows, baseline, baseline_out = [], None, None
    for name in ["eager fp32"] + [n for n in names if n != "eager fp32"]:
        precision, compile_steps, cuda_graphs = VARIANTS[name]
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runner = TorchRunner(model, device, precision, compile_steps, cuda_graphs)
        first, _ = _timed_clip(runner, clip)
        steady, out = _timed_clip(runner, clip)
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
                else peak_rss_mib())
        if baseline is None:
            baseline, baseline_out = steady, out
        row = {"variant": name, "first_run_s": first, "steady_s": steady,
               "fps": len(clip) / steady, "speedup": baseline / steady,
               "psnr_vs_eager_fp32_db": _psnr(out, baseline_out), "peak_memory_mib": peak}
        rows.append(row)
        print(row, flush=True)
        del runner

    h, w = clip.shape[2:]
    payload = {"clip": "vid4/calendar LR", "frames": len(clip), "lr_size": [h, w],
               "device": device, "machine": machine(), "runs": rows}
    memory = ("GPU memory allocated (peak of each variant)" if device.startswith("cuda")
              else "process peak RSS so far (grows over the variants)")
    lines = [f"# Torch backend options on {device}",
             "",
             f"Vid4 calendar LR, {len(clip)} frames of {w}x{h}, reference weights (published "
             "size), runtime driver with batch 4. First run includes compiling / capturing; "
             "frames/s and speed-up from the second run, against eager FP32 in the same "
             "process.",
             "",
             "| variant | first run s | steady s | frames/s | speed-up | PSNR vs eager FP32 dB "
             "| peak MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['first_run_s']:.1f} | {r['steady_s']:.2f} | "
                     f"{r['fps']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['psnr_vs_eager_fp32_db']:.1f} | {r['peak_memory_mib']:.0f} |")
    lines += ["", f"Peak memory: {memory}. Machine: {machine()}"]
    write_results(f"torch_backend_{device.split(':')[0]}", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
