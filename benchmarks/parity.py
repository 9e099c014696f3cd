"""Parity and CPU speed of every available backend/precision against PyTorch FP32.

    python benchmarks/parity.py [--frames 41] [--threads N]

On the Vid4 calendar LR clip (144x180) with the reference weights: per-frame
PSNR and max abs of each backend's output against PyTorch eager FP32 (does
the error grow along the recurrence?), and frames/s of each, all measured in
one process. Writes ``results/parity.{json,md,png}`` and
``results/speed_cpu.{json,md}``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from common import CALENDAR_LR, REFERENCE_WEIGHTS, load_frames, machine, plot_lines, write_results

from hirn.export.onnx_export import ExportOptions, export_onnx
from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeRunner
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import load_model


def _per_frame(out: np.ndarray, ref: np.ndarray) -> tuple[list[float], list[float]]:
    """PSNR (dB, outputs clamped to [0, 1]) and max abs (unclamped) per frame."""
    psnrs, maxabs = [], []
    for o, r in zip(out, ref):
        mse = float(((np.clip(o, 0, 1) - np.clip(r, 0, 1)) ** 2).mean())
        psnrs.append(float("inf") if mse == 0 else 10 * np.log10(1 / mse))
        maxabs.append(float(np.abs(o - r).max()))
    return psnrs, maxabs


@click.command()
@click.option("--frames", default=41, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for every backend")
@click.option("--batch-size", default=4, show_default=True)
def main(frames: int, threads: int | None, batch_size: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    clip = load_frames(CALENDAR_LR, frames).transpose(0, 3, 1, 2).astype(np.float32) / 255
    model = load_model(REFERENCE_WEIGHTS)
    t = len(clip)

    start = time.perf_counter()
    with torch.no_grad():
        reference = model(torch.from_numpy(clip)[None])[0].numpy()
    eager_s = time.perf_counter() - start
    runs = [{"backend": "torch eager (HiRN.forward)", "precision": "fp32", "seconds": eager_s,
             "fps": t / eager_s, "psnr": [float("inf")] * t, "max_abs": [0.0] * t}]

    with tempfile.TemporaryDirectory() as tmp:
        candidates = [("torch runner", "fp32", lambda: TorchRunner(model))]
        for dcn, precision in (("onnx", "fp32"), ("decomposed", "fp32"), ("onnx", "fp16")):
            folder = Path(tmp) / f"{dcn}-{precision}"
            export_onnx(None, folder, ExportOptions(dcn=dcn, precision=precision), model=model)
            candidates.append((f"onnxruntime CPU dcn={dcn}", precision,
                               lambda f=folder: OnnxRuntimeRunner(f, threads=threads)))
        for name, precision, make in candidates:
            runner = make()
            upscale_clip(runner, clip[:2], batch_size)  # warm-up (sessions, allocations)
            start = time.perf_counter()
            out = upscale_clip(runner, clip, batch_size)
            seconds = time.perf_counter() - start
            psnr, max_abs = _per_frame(out, reference)
            runs.append({"backend": name, "precision": precision, "seconds": seconds,
                         "fps": t / seconds, "psnr": psnr, "max_abs": max_abs})
            print(f"{name} {precision}: {t / seconds:.3f} frames/s, min PSNR {min(psnr):.1f} dB",
                  flush=True)

    info = {"clip": "vid4/calendar LR_bicubic_matlab", "frames": t,
            "lr_size": list(clip.shape[2:]), "weights": REFERENCE_WEIGHTS.name,
            "machine": machine(), "threads": torch.get_num_threads()}
    lines = ["| backend | precision | mean PSNR dB | min PSNR dB | max abs | first-5 max abs | "
             "last-5 max abs |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs[1:]:
        finite = [p for p in r["psnr"] if np.isfinite(p)] or [float("inf")]
        lines.append(f"| {r['backend']} | {r['precision']} | {np.mean(finite):.1f} | "
                     f"{min(r['psnr']):.1f} | {max(r['max_abs']):.2e} | "
                     f"{max(r['max_abs'][:5]):.2e} | {max(r['max_abs'][-5:]):.2e} |")
    write_results("parity", {**info, "runs": runs[1:]},
                  "Against PyTorch eager FP32 on the same frames (PSNR on outputs clamped to "
                  "[0, 1]).\n\n" + "\n".join(lines))
    plot_lines(Path(__file__).parent / "results" / "parity.png",
               {f"{r['backend']} {r['precision']}":
                (list(range(t)), [float(np.log10(max(v, 1e-12))) for v in r["max_abs"]])
                for r in runs[1:]},
               "error vs PyTorch FP32 along the clip (calendar)", "frame index",
               "log10 max abs")

    base = runs[0]["fps"]
    lines = ["| backend | precision | seconds | frames/s | vs torch eager |",
             "| --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['seconds']:.1f} | "
                     f"{r['fps']:.3f} | {r['fps'] / base:.2f}x |")
    write_results("speed_cpu", {**info, "runs": [{k: v for k, v in r.items()
                                                  if k not in ("psnr", "max_abs")}
                                                 for r in runs]},
                  f"CPU, {t} frames {clip.shape[3]}x{clip.shape[2]}, one process, "
                  f"{torch.get_num_threads()} threads.\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
