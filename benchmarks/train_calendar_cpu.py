"""A short real training on CPU: HiRN learns the Vid4 calendar clip.

Runs ``configs/vid4_calendar_cpu.yml`` (a small HiRN, SpyNet from
``../shared/weights``, 64x64 LR crops made on the fly with MATLAB imresize) and
records the validation Y-PSNR on a fixed crop of the calendar frames against
MATLAB bicubic on the same crop. Writes ``results/train_calendar_cpu.{json,md,png}``.

    nice -n 10 python benchmarks/train_calendar_cpu.py            # the full run (< 20 min)
    python benchmarks/train_calendar_cpu.py --total-iter 4 --out /tmp/smoke   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIRN_SHARED", REPO.parent / "shared"))
CONFIG = REPO / "configs" / "vid4_calendar_cpu.yml"
NAME = "train_calendar_cpu"


def load_raw(total_iter: int | None) -> dict:
    """The config with ``../shared`` pointing at SHARED (and a shorter run if asked)."""
    from hirn.train.config import read_yaml

    def fix(node):
        if isinstance(node, dict):
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, str) and node.startswith("../shared/"):
            return str(SHARED / node.removeprefix("../shared/"))
        return node

    raw = fix(read_yaml(CONFIG))
    if total_iter:
        raw["train"]["total_iter"] = total_iter
        raw["train"]["scheduler"]["periods"] = [total_iter]
        raw["train"]["fix_flow"] = min(raw["train"]["fix_flow"], total_iter // 2)
        raw["val"]["val_freq"] = max(1, total_iter // 2)
        raw["logger"]["save_checkpoint_freq"] = total_iter
    return raw


def plot(path: Path, iters, psnr, psnr_ema, bicubic, loss_iters, losses) -> str:
    """Validation PSNR (and the training loss) against iterations, as a PNG.

    ``psnr_ema`` holds ``(iter, psnr)`` pairs (the EMA is not scored at iteration 0).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_cv2(path, iters, psnr, bicubic)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(iters, psnr, "o-", label="HiRN (weights)")
    if psnr_ema:
        ax1.plot(*zip(*psnr_ema), "s--", label="HiRN (EMA)")
    ax1.axhline(bicubic, color="k", ls=":", label=f"bicubic {bicubic:.2f} dB")
    ax1.set(xlabel="iteration", ylabel="Y-PSNR (dB)", title="calendar crop, validation")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(loss_iters, losses)
    ax2.set(xlabel="iteration", ylabel="Charbonnier loss", title="training loss", yscale="log")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return "matplotlib"


def _plot_cv2(path: Path, iters, psnr, bicubic) -> str:
    import cv2

    w, h, m = 640, 400, 50
    img = np.full((h, w, 3), 255, np.uint8)
    lo, hi = min(min(psnr), bicubic) - 0.2, max(max(psnr), bicubic) + 0.2
    span = max(iters[-1], 1)

    def xy(i, v):
        return int(m + (w - 2 * m) * i / span), int(h - m - (h - 2 * m) * (v - lo) / (hi - lo))

    cv2.line(img, xy(0, bicubic), xy(span, bicubic), (0, 0, 0), 1)
    pts = [xy(i, v) for i, v in zip(iters, psnr)]
    for a, b in zip(pts, pts[1:]):
        cv2.line(img, a, b, (200, 80, 0), 2)
    cv2.putText(img, f"val Y-PSNR vs iteration; bicubic {bicubic:.2f} dB", (m, 30),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)
    return "opencv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--total-iter", type=int, help="shorter run (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: on a shared 2-core machine more is slower)")
    args = parser.parse_args()

    from hirn.train.config import parse_config
    from hirn.train.loop import LOG_NAME, train

    torch.set_num_threads(args.threads)
    cfg = parse_config(load_raw(args.total_iter), str(CONFIG))
    start, cpu0 = time.time(), time.process_time()
    with tempfile.TemporaryDirectory() as work:
        result = train(cfg, Path(work), device="cpu", progress=False)
        logs = [json.loads(line) for line in (Path(work) / LOG_NAME).read_text().splitlines()]
    wall, cpu = time.time() - start, time.process_time() - cpu0

    bicubic = next(r["val_psnr_bicubic"] for r in logs if "val_psnr_bicubic" in r)
    val = [r for r in logs if "val_psnr" in r]
    train_logs = [r for r in logs if "loss" in r]
    best = max(val, key=lambda r: r["val_psnr"])
    final = val[-1]
    net = cfg.network_g
    report = {
        "config": str(CONFIG.relative_to(REPO)),
        "model": {"mid_channels": net.mid_channels, "num_blocks": net.num_blocks,
                  "parameters": None},
        "train": {"iterations": result.iteration, "num_frame": cfg.datasets.train.num_frame,
                  "gt_size": cfg.datasets.train.gt_size,
                  "batch": cfg.datasets.train.batch_size_per_gpu, "lr": cfg.train.optim_g.lr,
                  "fix_flow": cfg.train.fix_flow, "ema_decay": cfg.train.ema_decay},
        "validation": {"lq_crop": list(cfg.datasets.val.lq_crop or []),
                       "frames": cfg.datasets.val.num_frame, "metric": "Y-PSNR (BT.601), dB"},
        "bicubic_psnr": bicubic,
        "initial_psnr": val[0]["val_psnr"] if val[0]["iter"] == 0 else None,
        "final_psnr": final["val_psnr"], "final_psnr_ema": final.get("val_psnr_ema"),
        "best_psnr": best["val_psnr"], "best_iter": best["iter"],
        "above_bicubic_db": final["val_psnr"] - bicubic,
        "curve": [{k: r[k] for k in ("iter", "val_psnr", "val_psnr_ema") if k in r} for r in val],
        "loss": [{"iter": r["iter"], "loss": r["loss"]} for r in train_logs],
        "wall_s": wall, "cpu_s": cpu, "threads": args.threads,
        "seconds_per_iter": float(np.mean([r["iter_time"] for r in train_logs])),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"(shared), torch {torch.__version__}",
    }
    from hirn.train import HiRN
    report["model"]["parameters"] = sum(
        p.numel() for p in HiRN(net.mid_channels, net.num_blocks).parameters())

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    how = plot(args.out / f"{NAME}.png", [r["iter"] for r in val], [r["val_psnr"] for r in val],
               [(r["iter"], r["val_psnr_ema"]) for r in val if "val_psnr_ema" in r], bicubic,
               [r["iter"] for r in train_logs], [r["loss"] for r in train_logs])
    rows = "\n".join(f"| {r['iter']} | {r['val_psnr']:.3f} | "
                     f"{r.get('val_psnr_ema', float('nan')):.3f} |" for r in val)
    md = f"""# Short CPU training on Vid4 calendar

`python benchmarks/train_calendar_cpu.py` ({report['config']}): HiRN with
{net.mid_channels} channels and {net.num_blocks} blocks ({report['model']['parameters']:,}
parameters, SpyNet from `spynet_sintel_final.pth`), {result.iteration} iterations of
batch {report['train']['batch']} x {report['train']['num_frame']} frames, 64x64 LR crops
made on the fly with MATLAB imresize, Adam lr {report['train']['lr']:g} (cosine),
SpyNet frozen for {report['train']['fix_flow']} iterations, EMA {report['train']['ema_decay']}.
Validation: Y-PSNR on LR crop {report['validation']['lq_crop']} (top, left, h, w) of
the first {report['validation']['frames']} calendar frames (LR_bicubic_matlab), uint8 outputs.
The clip is both trained and validated on: this shows the loop learns, not generalisation.

| | Y-PSNR (dB) |
| --- | --- |
| bicubic (MATLAB imresize x4) | {bicubic:.3f} |
| HiRN at iteration 0 | {report['initial_psnr'] if report['initial_psnr'] is None
                          else f"{report['initial_psnr']:.3f}"} |
| HiRN at the end (weights / EMA) | {final['val_psnr']:.3f} / {
    final.get('val_psnr_ema', float('nan')):.3f} |
| best (iteration {best['iter']}) | {best['val_psnr']:.3f} |
| final minus bicubic | {report['above_bicubic_db']:+.3f} |

| iteration | weights | EMA |
| --- | --- | --- |
{rows}

{wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU, {report['seconds_per_iter']:.2f} s per
iteration, {args.threads} thread(s), on {report['machine']}. Curve: `{NAME}.png` ({how}).
"""
    (args.out / f"{NAME}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
