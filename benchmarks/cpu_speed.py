"""The CPU paths end to end: speed, where the time goes, and quality against PyTorch FP32.

    nice -n 15 python benchmarks/cpu_speed.py [--frames 16] [--threads 2]

On the Vid4 calendar LR clip (180x144) with the reference weights (the published model
size), in one process: PyTorch eager FP32 (``HiRN.forward``, the baseline), ONNX Runtime
FP32, OpenVINO f32 (``DeformConv`` through the frontend extension, and the ``--dcn
decomposed`` graphs), OpenVINO bf16 and torch bf16 (where the CPU computes bfloat16
natively; skipped with the reason elsewhere). For each: frames/s and the ratio to the
baseline, seconds per graph (OpenVINO's compile time apart), and PSNR against the FP32
output per frame (mean, worst; plotted along the clip). Writes
``results/cpu_speed.{json,md,png}``.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import click
import numpy as np
import torch
from common import CALENDAR_LR, REFERENCE_WEIGHTS, load_frames, machine, plot_lines, write_results
from parity import _per_frame

from hirn.export.onnx_export import ExportOptions, export_onnx
from hirn.runtime.backends.base import cpu_has_native_bf16
from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeRunner
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import load_model

GOAL = "default CPU path >= 2x ONNX Runtime FP32, mean PSNR >= 45 dB, worst frame >= 40 dB"


def _timed(runner) -> tuple[dict, dict]:
    """Wrap ``runner`` so that it adds up seconds per graph (and OpenVINO's compiling)."""
    per_graph, compiling = defaultdict(float), defaultdict(float)
    run = runner._run_impl

    def timed_run(graph, inputs):
        start = time.perf_counter()
        out = run(graph, inputs)
        per_graph[graph] += time.perf_counter() - start
        return out

    runner._run_impl = timed_run
    if hasattr(runner, "_request"):
        request = runner._request

        def timed_request(graph, inputs):
            start = time.perf_counter()
            fresh = (graph, *(tuple(x.shape) for x in inputs)) not in runner.requests
            out = request(graph, inputs)
            if fresh:
                compiling[graph] += time.perf_counter() - start
            return out

        runner._request = timed_request
    return per_graph, compiling


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return machine()["cpu"]


def _openvino(folder: Path, precision: str, threads: int | None):
    from hirn.runtime.backends.openvino_backend import OpenVinoRunner

    cache = Path(tempfile.mkdtemp(prefix="ov-cache-"))  # no blobs of an earlier run
    return OpenVinoRunner(folder, precision=precision, threads=threads, cache_dir=cache)


@click.command()
@click.option("--frames", default=16, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
def main(frames: int, threads: int, batch_size: int) -> None:
    torch.set_num_threads(threads)
    clip = load_frames(CALENDAR_LR, frames).transpose(0, 3, 1, 2).astype(np.float32) / 255
    model = load_model(REFERENCE_WEIGHTS)
    t = len(clip)
    import openvino

    from hirn.runtime.backends.openvino_backend import openvino_has_bf16

    ov_bf16, torch_bf16 = openvino_has_bf16(openvino.Core()), cpu_has_native_bf16()
    no_bf16 = ("this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16; OpenVINO would "
               "run f32, torch emulates it: one 64-channel 3x3 convolution at 180x144 took "
               "4.64 s in bf16 against 0.27 s in FP32 here)")

    start = time.perf_counter()
    with torch.no_grad():
        reference = model(torch.from_numpy(clip)[None])[0].numpy()
    eager_s = time.perf_counter() - start
    runs = [{"path": "torch eager (HiRN.forward)", "precision": "fp32", "seconds": eager_s,
             "fps": t / eager_s, "psnr": [float("inf")] * t, "per_graph": {},
             "compile_s": 0.0}]
    print(f"baseline: {t / eager_s:.3f} frames/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for dcn in ("onnx", "decomposed"):
            folders[dcn] = Path(tmp) / dcn
            export_onnx(None, folders[dcn], ExportOptions(dcn=dcn), model=model)
        candidates = [
            ("onnxruntime dcn=onnx", "fp32", None,
             lambda: OnnxRuntimeRunner(folders["onnx"], threads=threads)),
            ("openvino dcn=onnx (extension)", "fp32", None,
             lambda: _openvino(folders["onnx"], "fp32", threads)),
            ("openvino dcn=onnx (extension)", "bf16", None if ov_bf16 else no_bf16,
             lambda: _openvino(folders["onnx"], "bf16", threads)),
            ("torch runner", "bf16", None if torch_bf16 else no_bf16,
             lambda: TorchRunner(model, precision="bf16")),
            ("openvino dcn=decomposed", "fp32", None,
             lambda: _openvino(folders["decomposed"], "fp32", threads)),
        ]
        for name, precision, skipped, make in candidates:
            if skipped:
                runs.append({"path": name, "precision": precision, "skipped": skipped})
                print(f"{name} {precision}: skipped, {skipped}", flush=True)
                continue
            runner = make()
            per_graph, compiling = _timed(runner)
            start = time.perf_counter()
            out = upscale_clip(runner, clip, batch_size)
            compile_s = sum(compiling.values())
            seconds = time.perf_counter() - start - compile_s
            psnr, _ = _per_frame(out, reference)
            runs.append({"path": name, "precision": precision, "seconds": seconds,
                         "fps": t / seconds, "psnr": psnr, "compile_s": compile_s,
                         "per_graph": {g: s - compiling.get(g, 0.0)
                                       for g, s in sorted(per_graph.items())}})
            print(f"{name} {precision}: {t / seconds:.3f} frames/s, mean PSNR "
                  f"{np.mean(psnr):.1f} dB, worst {min(psnr):.1f} dB", flush=True)
            # written after every run: a run stopped part-way keeps what it measured
            _write(runs, clip, threads, ov_bf16, torch_bf16)


def _write(runs: list[dict], clip: np.ndarray, threads: int, ov_bf16: bool,
           torch_bf16: bool) -> None:
    t = len(clip)
    info = {"clip": "vid4/calendar LR_bicubic_matlab", "frames": t,
            "lr_size": list(clip.shape[2:]), "weights": REFERENCE_WEIGHTS.name,
            "machine": {**machine(), "cpu_name": _cpu_name()}, "threads": threads,
            "native_bf16": {"openvino": ov_bf16, "cpuinfo": torch_bf16}, "goal": GOAL}
    base = runs[0]["fps"]
    ort = next(r["fps"] for r in runs if r["path"].startswith("onnxruntime"))
    lines = [f"CPU: {_cpu_name()}, {threads} threads (shared machine), native "
             f"bf16: {ov_bf16}. {t} frames {clip.shape[3]}x{clip.shape[2]}, reference "
             f"weights; PSNR against PyTorch eager FP32 (outputs clamped to [0, 1]). OpenVINO's "
             f"compile time is left out of its seconds (a later run loads it from CACHE_DIR). "
             f"Paths run one after another: on a shared machine whose load changes, only "
             f"ratios measured on an otherwise idle machine compare.",
             "", "| path | precision | seconds | frames/s | vs torch eager | vs ORT FP32 | "
             "mean PSNR dB | worst PSNR dB | compile s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        if "skipped" in r:
            lines.append(f"| {r['path']} | {r['precision']} | skipped: {r['skipped']} "
                         f"| | | | | | |")
            continue
        finite = [p for p in r["psnr"] if np.isfinite(p)] or [float("inf")]
        lines.append(f"| {r['path']} | {r['precision']} | {r['seconds']:.1f} | "
                     f"{r['fps']:.3f} | {r['fps'] / base:.2f}x | {r['fps'] / ort:.2f}x | "
                     f"{np.mean(finite):.1f} | {min(r['psnr']):.1f} | {r['compile_s']:.1f} |")
    timed = [r for r in runs if r.get("per_graph")]
    graphs = sorted({g for r in timed for g in r["per_graph"]})
    lines += ["", "Seconds per graph over the clip (where the time goes):", "",
              "| graph | " + " | ".join(f"{r['path']} {r['precision']}" for r in timed) + " |",
              "| --- |" + " --- |" * len(timed)]
    for g in graphs:
        lines.append(f"| {g} | " + " | ".join(f"{r['per_graph'].get(g, 0.0):.1f}"
                                              for r in timed) + " |")
    lines += ["", f"Goal: {GOAL}."]
    write_results("cpu_speed", {**info, "runs": runs}, "\n".join(lines))
    plot_lines(Path(__file__).parent / "results" / "cpu_speed.png",
               {f"{r['path']} {r['precision']}": (list(range(t)), r["psnr"])
                for r in runs[1:] if "psnr" in r},
               "PSNR vs PyTorch FP32 along the clip (calendar)", "frame index", "PSNR dB")


if __name__ == "__main__":
    main()
