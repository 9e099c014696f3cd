"""Spatial tiles: dB lost against untiled processing, per tile size and overlap.

Each Vid4 clip's first ``--frames`` LR frames (``../shared/data/vid4/<clip>/LR_bicubic_matlab``,
or MATLAB-style ``imresize(GT, 1/4)`` where a clip has none, as ``hirn-eval`` makes them) run
through the published model size with ``../shared/reference/hirn_random_seed1.pth``
(random weights of the published size) once whole, then in square tiles of each size and
overlap (``hirn.runtime.tiles.upscale_tiled``, as ``hirn-run --tile SxS --tile-overlap O``
runs a window). PSNR of the tiled output against the untiled one, both clamped to [0, 1]
(inf when equal: higher is better). "area" is the LR area the tiles compute over the frame's
(what tiles cost in time, roughly); "time" is measured against the untiled run of the same
clip in this process.

    python benchmarks/tile_quality.py [--frames 4] [--tiles 64,96,128] [--overlaps 0,8,16,32]
                                      [--clips calendar,city,foliage,walk] [--threads 2]
                                      [--crop HxW]

Writes benchmarks/results/tile_quality.{json,md} (after each clip, so a stopped run keeps
what it measured). The table there was made in parallel runs on a loaded CPU, each with
``--frames 2 --crop 64x176 --threads 1 --clips CLIP --name tile_quality_PART``: every clip
with ``--tiles 64 --overlaps 0,16`` and ``--overlaps 8,32``, calendar also with
``--tiles 96,128 --overlaps 16``; then ``--merge`` of those parts (removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
from common import REFERENCE_WEIGHTS, RESULTS, SHARED, machine, write_results

from hirn.runtime.padding import crop_output, pad_frames, to_float
from hirn.runtime.tiles import DEFAULT_TILE_OVERLAP, make_grid, upscale_tiled
from hirn.train.evaluate import load_clip

NAME = "tile_quality"
CLIPS = ("calendar", "city", "foliage", "walk")
MAX_LEVELS = 1.0  # 8-bit levels a seam may cost: what no one sees
CPU = "AMD EPYC, 2 shared cores (a training job ran beside), no avx512_bf16"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def least_overlap(grid) -> int | None:
    """The least overlap of neighbouring tiles (None for one tile)."""
    gaps = [a[1] - b[0] for axis in (grid.rows, grid.cols) for a, b in zip(axis, axis[1:])]
    return min(gaps) if gaps else None


def measure(runner, clip: str, frames: int, tiles: list[int], overlaps: list[int],
            crop: tuple[int, int] | None = None) -> dict:
    """Every (tile, overlap) on one clip: dB against untiled, area and time ratios."""
    from hirn.runtime.driver import upscale_clip

    _, lr, source = load_clip(SHARED / "data" / "vid4" / clip, max_frames=frames, crop=crop)
    height, width = lr.shape[1:3]
    images = pad_frames(to_float(lr))
    began = time.perf_counter()
    whole = np.clip(crop_output(upscale_clip(runner, images), height, width), 0, 1)
    seconds = time.perf_counter() - began
    print(f"{clip} {width}x{height}: untiled {seconds:.1f} s", flush=True)
    rows, done = [], {}
    for tile in tiles:
        for overlap in overlaps:
            grid = make_grid(height, width, tile, tile, overlap)
            if (grid.rows, grid.cols) not in done:  # small frames: settings may share a grid
                began = time.perf_counter()
                out = upscale_tiled(runner, images, grid)
                took = time.perf_counter() - began
                out = np.clip(crop_output(out, height, width), 0, 1)
                done[grid.rows, grid.cols] = (psnr(out, whole),
                                              float(np.abs(out - whole).max() * 255), took)
                print(f"  {grid.describe()}: {done[grid.rows, grid.cols][0]:.2f} dB, "
                      f"{took:.1f} s", flush=True)
            db, levels, took = done[grid.rows, grid.cols]
            frame_h, frame_w = grid.frame
            rows.append({"tile": tile, "overlap": overlap, "grid": grid.describe(),
                         "tiles": len(grid), "least_overlap": least_overlap(grid), "db": db,
                         "max_levels": levels,
                         "area": len(grid) * grid.size[0] * grid.size[1] / frame_h / frame_w,
                         "time": took / seconds})
    return {"clip": clip, "size": f"{width}x{height}", "frames": frames, "lr": source,
            "untiled_seconds": seconds, "rows": rows}


def markdown(results: list[dict], args) -> str:
    by_setting: dict[tuple[int, int], dict[str, dict]] = {}
    for clip in results:
        for row in clip["rows"]:
            by_setting.setdefault((row["tile"], row["overlap"]), {})[clip["clip"]] = row
    names = [c["clip"] for c in results]
    lines = ["| tile (LR px) | overlap | " + " | ".join(f"{n} dB" for n in names)
             + " | mean dB | worst 8-bit levels | least shared px | area | time | tiles |",
             "| --- | --- | " + " | ".join("---" for _ in names)
             + " | --- | --- | --- | --- | --- | --- |"]
    for (tile, overlap), per_clip in sorted(by_setting.items()):
        rows = list(per_clip.values())
        dbs = [r["db"] for r in rows]
        finite = [d for d in dbs if math.isfinite(d)]
        mean = sum(finite) / len(finite) if len(finite) == len(dbs) else math.inf
        cells = [f"{per_clip[n]['db']:.2f}" if n in per_clip else "-" for n in names]
        lines.append(f"| {tile} | {overlap} | " + " | ".join(cells)
                     + f" | {mean:.2f} | {max(r['max_levels'] for r in rows):.1f} | "
                     f"{rows[0]['least_overlap']} | "
                     f"{sum(r['area'] for r in rows) / len(rows):.2f}x | "
                     f"{sum(r['time'] for r in rows) / len(rows):.2f}x | {rows[0]['grid']} |")
    sizes = ", ".join(f"{c['clip']} {c['size']} from {c['lr']} (untiled "
                      f"{c['untiled_seconds']:.0f} s)"
                      for c in results)
    return "\n".join([
        "# Spatial tiles: dB lost against untiled processing",
        "",
        f"PSNR of tiled against untiled output (clamped to [0, 1]; higher is closer), first "
        f"{args.frames} LR frames of each Vid4 clip"
        f"{f', a centred {args.crop} LR crop' if args.crop else ''} ({sizes}), published "
        f"model size with "
        f"the reference weights `hirn_random_seed1.pth` (random weights: no trained checkpoint "
        f"exists here). Square tiles, as `hirn-run --tile SxS --tile-overlap O` places them: "
        f"neighbours share O LR px, the last tile of a row or column sits at the frame's "
        f"edge and may share more; a tile as large as the frame's side leaves that side "
        f"whole. Area: LR pixels computed "
        f"over the frame's; time: against the untiled run of the same clip, with other jobs "
        f"loading the CPU (load average near 30), so area is the steadier figure of cost.",
        "",
        *lines,
        "",
        choice(by_setting),
        "",
        f"CPU: {CPU}; torch {machine()['torch']}, {args.threads} threads, FP32.",
    ])


def choice(by_setting: dict) -> str:
    """The default overlap these figures give: the least, among the smallest tiles
    measured, whose worst pixel on every clip stays within one 8-bit level of untiled."""
    smallest = min(tile for tile, _ in by_setting)
    within = sorted(overlap for (tile, overlap), per_clip in by_setting.items()
                    if tile == smallest
                    and max(r["max_levels"] for r in per_clip.values()) <= MAX_LEVELS)
    chosen = f"overlap {within[0]}" if within else "no overlap measured"
    return (f"Default overlap: the least with which the smallest tiles ({smallest} px, the "
            f"most seams) keep every pixel within {MAX_LEVELS} 8-bit level of untiled on every "
            f"clip: {chosen} (`hirn-run --tile-overlap` defaults to {DEFAULT_TILE_OVERLAP}). "
            f"Seams in these crops run one way only (the crop is one tile high); the worst "
            f"pixel, not the mean, is what a seam shows. Random weights: a trained model's "
            f"reach across a seam may differ.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--tiles", default="64,96,128")
    parser.add_argument("--overlaps", default="0,8,16,32")
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crop", help="HxW: a centred LR crop of each clip (less CPU time)")
    parser.add_argument("--name", default=NAME, help="results/NAME.{json,md}")
    parser.add_argument("--merge", help="NAME,NAME: the clips of earlier runs (each its own "
                                        "process, e.g. one per clip) into results/NAME")
    args = parser.parse_args()
    if args.merge:
        merge(args)
        return
    if not REFERENCE_WEIGHTS.exists():
        sys.exit(f"{REFERENCE_WEIGHTS} is absent: the ../shared checkout is needed")
    import torch

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.train import load_model

    torch.set_num_threads(args.threads)
    runner = TorchRunner(load_model(REFERENCE_WEIGHTS))
    tiles = [int(t) for t in args.tiles.split(",")]
    overlaps = [int(o) for o in args.overlaps.split(",")]
    crop = tuple(int(n) for n in args.crop.split("x")) if args.crop else None
    results = []
    for clip in args.clips.split(","):
        results.append(measure(runner, clip, args.frames, tiles, overlaps, crop))
        payload = {"frames": args.frames, "crop": args.crop, "weights": REFERENCE_WEIGHTS.name,
                   "cpu": CPU, "machine": machine(), "clips": results}
        write_results(args.name, payload, markdown(results, args))


def merge(args) -> None:
    """One table from runs that measured other clips with the same frames and crop."""
    parts = [json.loads((RESULTS / f"{name}.json").read_text()) for name in
             args.merge.split(",")]
    args.frames, args.crop = parts[0]["frames"], parts[0]["crop"]
    args.threads = parts[0]["machine"]["torch_threads"]
    if any((p["frames"], p["crop"]) != (args.frames, args.crop) for p in parts):
        sys.exit("the runs to merge took other frames or crops")
    results: dict[str, dict] = {}  # one clip's settings may come from several runs
    for clip in (clip for part in parts for clip in part["clips"]):
        if clip["clip"] not in results:
            results[clip["clip"]] = {**clip, "rows": []}
        results[clip["clip"]]["rows"] += clip["rows"]
    results = list(results.values())
    write_results(args.name, {**parts[0], "clips": results}, markdown(results, args))


if __name__ == "__main__":
    main()
