"""Whether a restructuring changed what hirn-run writes: the same command through two installs
(this tree's ``hirn-run`` and another's, e.g. an earlier commit installed in its own virtual
environment), on the Vid4 calendar LR frames, lossless (FFV1), for the torch, ONNX Runtime and
OpenVINO backends; each frame's samples compared.

    git worktree add /tmp/old COMMIT
    python -m venv --system-site-packages /tmp/oldenv
    /tmp/oldenv/bin/pip install --no-deps -e /tmp/old
    python benchmarks/same_output.py --other /tmp/oldenv/bin --label COMMIT

Writes benchmarks/results/same_output.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from common import machine, write_results

REPO = Path(__file__).resolve().parents[1]
CALENDAR = REPO.parent / "shared" / "data" / "vid4" / "calendar" / "LR_bicubic_matlab"
BACKENDS = {"torch": [], "onnxruntime": ["--backend", "onnxruntime"],
            "openvino": ["--backend", "openvino"]}


def frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def run(bin_dir: Path | None, args: list[str]) -> tuple[float, float]:
    """Run hirn-run as a user would (no environment changes); its wall seconds and peak RSS
    in MiB (the child's own, from wait4)."""
    program = str(bin_dir / "hirn-run") if bin_dir else shutil.which("hirn-run")
    start = time.perf_counter()
    child = subprocess.Popen([program, *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{program} failed: {child.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def export(bin_dir: Path | None, folder: Path) -> None:
    program = str(bin_dir / "hirn-export") if bin_dir else shutil.which("hirn-export")
    subprocess.run([program, "onnx", "default", "-o", str(folder)], check=True,
                   capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True,
                        help="bin folder of the other install (holds hirn-run, hirn-export)")
    parser.add_argument("--label", default="other")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--threads", default="2")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="same_output_"))
    images = work / "calendar"
    images.mkdir()
    for path in sorted(CALENDAR.glob("*.png"))[:options.frames]:
        shutil.copy(path, images / path.name)
    rows = []
    for name, extra in BACKENDS.items():
        outputs, costs = [], []
        for side, bin_dir in (("this", None), (options.label, options.other)):
            weights = []
            if name != "torch":
                folder = work / f"graphs_{side}"
                if not folder.exists():
                    export(bin_dir, folder)
                weights = ["--onnx", str(folder)]
            out = work / f"{name}_{side}.mkv"
            costs.append(run(bin_dir, [str(images), "-o", str(out), "--codec", "ffv1", "-q",
                                       "--threads", options.threads, *weights, *extra]))
            outputs.append(frames(out))
        this, other = outputs
        differing = sum(int(not np.array_equal(a, b)) for a, b in zip(this, other))
        rows.append({"backend": name, "frames": len(this), "frames_other": len(other),
                     "frames_differing": differing,
                     "max_level_difference": int(max(np.abs(a.astype(int) - b).max()
                                                     for a, b in zip(this, other))),
                     "seconds": costs[0][0], "seconds_other": costs[1][0],
                     "peak_rss_mib": costs[0][1], "peak_rss_mib_other": costs[1][1]})
    payload = {"other": options.label, "input": f"Vid4 calendar LR, {options.frames} frames",
               "machine": machine(), "rows": rows}
    lines = [f"# hirn-run's output: this tree against {options.label}", "",
             f"Vid4 calendar LR ({options.frames} frames, 180x144), built-in weights, FFV1 "
             f"(lossless), `--threads {options.threads}`; ONNX folders exported by each side.",
             "Seconds and peak RSS: the real hirn-run command, one run each, this tree then the "
             "other, no environment changes (wall time / other's; machine in the JSON).",
             "", "| backend | frames | frames that differ | largest difference (levels) | "
             "seconds (other) | time ratio | peak RSS MiB (other) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['backend']} | {r['frames']} | {r['frames_differing']} | "
              f"{r['max_level_difference']} | {r['seconds']:.1f} ({r['seconds_other']:.1f}) | "
              f"{r['seconds'] / r['seconds_other']:.2f} | {r['peak_rss_mib']:.0f} "
              f"({r['peak_rss_mib_other']:.0f}) |" for r in rows]
    write_results("same_output", payload, "\n".join(lines))
    shutil.rmtree(work)
    sys.exit(0 if all(r["frames_differing"] == 0 for r in rows) else 1)


if __name__ == "__main__":
    main()
