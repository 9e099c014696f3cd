"""Speed and accuracy of the deformable-conv CUDA kernel against torchvision and pure torch.

    python benchmarks/dcn_kernel.py [--sizes 180x320,720x1280] [--iters 50] [--warmup 10]

On a CUDA GPU, at HiRN's shape (N=1, 128 -> 64 channels, 16 offset groups, 3x3, realistic
flows and masks from ``hirn.plugins.cases``) and each feature size, in one run: our kernel in
FP32 and FP16, ``torchvision.ops.deform_conv2d`` in FP32 and FP16 (when torchvision imports)
and ``hirn.model.deform_conv.deform_conv2d`` (grid_sample + matmul) in FP32 and FP16. Times
are CUDA-event milliseconds per call, ``--iters`` calls back to back after ``--warmup`` calls
(our kernel through ``bind_cuda``: arguments checked once, as in the TensorRT plugin);
accuracy is against the float64 pure-torch result. Writes ``results/dcn_kernel.json`` and
``.md``. Without a GPU it prints that nothing was measured and exits 0.
"""

from __future__ import annotations

import math
import sys

import click
import torch
from common import machine, write_results

from hirn.model.deform_conv import deform_conv2d
from hirn.plugins import loader
from hirn.plugins.cases import hirn_case


def _torchvision():
    try:
        import torchvision
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
    except Exception as exc:  # absent, or built for another torch
        print(f"torchvision unavailable, its rows are skipped: {exc}")
        return None, None
    return tv_deform_conv2d, torchvision.__version__


def _methods(tv) -> dict:
    """name -> (dtype, fn(case) -> a no-argument call returning the output)."""
    methods = {
        # Checked once, then only the launch is repeated (what the TensorRT plugin does).
        "hirn kernel": lambda c: loader.bind_cuda(*c.args()),
        "pure torch": lambda c: lambda: deform_conv2d(c.input, c.offset, c.weight, c.bias, 1,
                                                      1, 1, c.mask),
    }
    if tv is not None:
        methods["torchvision"] = lambda c: lambda: tv(c.input, c.offset, c.weight, c.bias,
                                                      stride=1, padding=1, dilation=1,
                                                      mask=c.mask)
    return {f"{name} {tag}": (dtype, fn) for name, fn in methods.items()
            for tag, dtype in (("fp32", torch.float32), ("fp16", torch.float16))}


def _time_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _accuracy(out, ref) -> tuple[float, float]:
    diff = out.double() - ref
    mse = float((diff**2).mean())
    peak = float(ref.max() - ref.min())
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    return float(diff.abs().max()), psnr


def _measure_size(height: int, width: int, methods: dict, warmup: int, iters: int) -> list:
    case32 = hirn_case(height, width, seed=0, device="cuda")
    cases = {torch.float32: case32, torch.float16: case32.to(torch.float16)}
    as64 = case32.to(torch.float64)
    ref = deform_conv2d(as64.input, as64.offset, as64.weight, as64.bias, 1, 1, 1, as64.mask)
    del as64
    torch.cuda.empty_cache()
    rows = []
    for name, (dtype, fn) in methods.items():
        call = fn(cases[dtype])
        with torch.no_grad():
            max_abs, psnr = _accuracy(call(), ref)
            torch.cuda.empty_cache()
            ms = _time_ms(call, warmup, iters)
        del call
        torch.cuda.empty_cache()
        rows.append({"method": name, "ms": ms, "max_abs_vs_fp64": max_abs, "psnr_db": psnr})
        print(f"{height}x{width} {name:18s} {ms:8.3f} ms  max abs {max_abs:.2e}  "
              f"PSNR {psnr:6.1f} dB", flush=True)
    base = next((r["ms"] for r in rows if r["method"] == "torchvision fp16"), None)
    for r in rows:
        r["speedup_vs_torchvision_fp16"] = base / r["ms"] if base else None
    return rows


@click.command()
@click.option("--sizes", default="180x320,720x1280", show_default=True,
              help="feature sizes HxW, comma-separated")
@click.option("--iters", default=50, show_default=True, help="timed calls per method")
@click.option("--warmup", default=10, show_default=True, help="untimed calls first")
def main(sizes: str, iters: int, warmup: int) -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing measured (run this on an NVIDIA GPU)")
        sys.exit(0)
    tv, tv_version = _torchvision()
    methods = _methods(tv)
    library = loader.compile_kernel_library()
    results = []
    for size in sizes.split(","):
        height, width = (int(v) for v in size.lower().split("x"))
        results.append({"size": [height, width],
                        "rows": _measure_size(height, width, methods, warmup, iters)})
    info = machine()
    payload = {"op": "HiRN DCNv2: N=1, C_in=128, C_out=64, G=16, 3x3, stride/pad/dilation 1",
               "timing": f"CUDA events, mean of {iters} back-to-back calls after {warmup}",
               "reference": "hirn.model.deform_conv.deform_conv2d in float64",
               "torchvision": tv_version, "kernel_library": str(library),
               "machine": info, "results": results}
    lines = [f"GPU: {info.get('gpu')}, torch {info['torch']}, torchvision {tv_version}. "
             f"{payload['timing']}; accuracy vs {payload['reference']}.", "",
             "| size | method | ms | x torchvision fp16 | max abs | PSNR dB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for res in results:
        h, w = res["size"]
        for r in res["rows"]:
            speed = r["speedup_vs_torchvision_fp16"]
            lines.append(f"| {h}x{w} | {r['method']} | {r['ms']:.3f} | "
                         f"{'' if speed is None else f'{speed:.2f}'} | "
                         f"{r['max_abs_vs_fp64']:.2e} | {r['psnr_db']:.1f} |")
    write_results("dcn_kernel", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
