"""Where the time goes, graph by graph: the torch step modules against ONNX Runtime (CPU).

    python benchmarks/graph_times.py [--repeats 3]

Each graph runs on random calendar-sized inputs (180x144 LR; batch 4 for the batchable graphs,
1 for the steps) in the torch backend and in onnxruntime for each DCN form, in one
process; the median of ``--repeats`` runs after a warm-up. Also times the deformable
convolution alone (HiRN's shape: 128 -> 64 channels, 16 offset groups). Writes
``results/graph_times.{json,md}``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click
import torch
from common import CALENDAR_LR, REFERENCE_WEIGHTS, load_frames, machine, write_results

from hirn.core.graphs import graph_specs
from hirn.export.onnx_export import ExportOptions, export_onnx, sample_inputs
from hirn.model.deform_conv import deform_conv2d
from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeRunner
from hirn.runtime.backends.torch_backend import TorchRunner
from hirn.train import load_model


def _median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@click.command()
@click.option("--repeats", default=3, show_default=True)
@click.option("--batch", default=4, show_default=True, help="frames per batchable graph")
def main(repeats: int, batch: int) -> None:
    h, w = load_frames(CALENDAR_LR, 1).shape[1:3]
    model = load_model(REFERENCE_WEIGHTS)
    specs = graph_specs(model.mid_channels)
    torch_runner = TorchRunner(model)
    rows = {s.name: {"graph": s.name, "batch": batch if s.batchable else 1} for s in specs}
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"torch": torch_runner}
        for dcn in ("onnx", "decomposed"):
            folder = Path(tmp) / dcn
            export_onnx(None, folder, ExportOptions(dcn=dcn), model=model)
            runners[f"onnxruntime {dcn}"] = OnnxRuntimeRunner(folder)
        for spec in specs:
            tensors = sample_inputs(spec, "fp32", batch, h, w)
            for name, runner in runners.items():
                inputs = list(tensors) if name == "torch" else [t.numpy() for t in tensors]
                rows[spec.name][name] = _median_seconds(lambda r=runner, i=inputs, g=spec.name:
                                                        r.run(g, *i), repeats)
            print(rows[spec.name], flush=True)

    # the deformable convolution alone, as the aligned steps call it
    x = torch.randn(1, 128, h, w)
    offset = torch.randn(1, 2 * 16 * 9, h, w) * 3
    mask = torch.rand(1, 16 * 9, h, w)
    weight, bias = torch.randn(64, 128, 3, 3) * 0.02, torch.zeros(64)
    with torch.no_grad():
        dcn_seconds = _median_seconds(
            lambda: deform_conv2d(x, offset, weight, bias, padding=1, mask=mask), repeats)

    names = list(runners)
    table = list(rows.values())
    totals = {n: sum(r[n] for r in table) for n in names}
    lines = ["| graph | batch | " + " | ".join(f"{n} ms" for n in names)
             + " | onnx / torch | decomposed / torch |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: |"]
    for r in table:
        lines.append(f"| {r['graph']} | {r['batch']} | "
                     + " | ".join(f"{1000 * r[n]:.0f}" for n in names)
                     + f" | {r['onnxruntime onnx'] / r['torch']:.2f} | "
                       f"{r['onnxruntime decomposed'] / r['torch']:.2f} |")
    lines.append("| **sum** | | " + " | ".join(f"**{1000 * totals[n]:.0f}**" for n in names)
                 + f" | {totals['onnxruntime onnx'] / totals['torch']:.2f} | "
                   f"{totals['onnxruntime decomposed'] / totals['torch']:.2f} |")
    payload = {"lr_size": [h, w], "repeats": repeats, "graphs": table,
               "torch_deform_conv_seconds": dcn_seconds, "machine": machine()}
    write_results("graph_times", payload,
                  f"One call of each graph on {w}x{h} inputs, CPU, median of {repeats} after a "
                  "warm-up; a ratio above 1 means ONNX Runtime is slower.\n\n"
                  + "\n".join(lines)
                  + f"\n\nThe torch deformable convolution alone (128 -> 64 channels, 16 offset "
                    f"groups, one {w}x{h} frame): {1000 * dcn_seconds:.0f} ms.\n\nMachine: "
                  + str(machine()))


if __name__ == "__main__":
    main()
