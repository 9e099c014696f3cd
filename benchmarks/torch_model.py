"""Speed and peak memory of the PyTorch model on a real clip (Vid4 calendar LR).

    python benchmarks/torch_model.py [--frames 41] [--device cpu|cuda]

Writes ``results/torch_model.json`` and ``.md``. On CUDA it also times FP16
autocast. Timings exclude the first (warm-up) run.
"""

from __future__ import annotations

import time

import click
import torch
from common import CALENDAR_LR, REFERENCE_WEIGHTS, load_frames, machine, peak_rss_mib, write_results

from hirn.train import HiRN, load_model


def _time_clip(model, lq, autocast_fp16: bool) -> float:
    device = lq.device.type
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device, dtype=torch.float16, enabled=autocast_fp16):
        model(lq)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@click.command()
@click.option("--frames", default=41, show_default=True, help="calendar frames to upscale")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu",
              show_default=True)
def main(frames: int, device: str) -> None:
    clip = load_frames(CALENDAR_LR, frames)
    lq = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255).unsqueeze(0).to(device)
    model = (load_model(REFERENCE_WEIGHTS) if REFERENCE_WEIGHTS.exists() else HiRN().eval())
    model = model.to(device)
    t, h, w = lq.shape[1], lq.shape[3], lq.shape[4]
    runs = [("fp32", False)] + ([("fp16-autocast", True)] if device == "cuda" else [])
    rows = []
    for precision, fp16 in runs:
        _time_clip(model, lq[:, :3], fp16)  # warm-up
        seconds = _time_clip(model, lq, fp16)
        peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                else peak_rss_mib())
        rows.append({"precision": precision, "seconds": seconds, "fps": t / seconds,
                     "peak_memory_mib": peak})
    payload = {"clip": "vid4/calendar LR", "frames": t, "lr_size": [h, w], "device": device,
               "machine": machine(), "runs": rows}
    lines = ["| device | precision | frames | LR size | s | frames/s | peak MiB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {device} | {r['precision']} | {t} | {w}x{h} | {r['seconds']:.1f} | "
                     f"{r['fps']:.3f} | {r['peak_memory_mib']:.0f} |")
    memory = "GPU memory allocated" if device == "cuda" else "process peak RSS"
    write_results(f"torch_model_{device}", payload,
                  "\n".join(lines) + f"\n\nPeak memory: {memory}. Machine: {machine()}")


if __name__ == "__main__":
    main()
