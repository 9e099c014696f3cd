"""Plant, one at a time, the bugs an audit of the suite once found it did not notice, and run
the tests written for them: each must now fail.

    python benchmarks/planted_bugs.py

Each bug is a text change to one file of a copy of the package (``build/planted/NAME``, laid
out as ``src/hirn/`` with ``tests/`` beside it, put first on ``PYTHONPATH``, so the working
tree is never touched). The copy is first run unchanged, so a test that fails for another
reason is not counted as catching the bug. Writes ``results/planted_bugs.{json,md}``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import REPO, SHARED, machine, write_results

STAGE = REPO / "build" / "planted"
PACKAGES = ("core", "runtime", "train", "export", "plugins")
COPIED = ("tests", "configs")


@dataclass(frozen=True)
class Bug:
    name: str
    path: str       # the file changed, under the repository root
    old: str        # text replaced (exactly once)
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail with the bug


BUGS = (
    Bug("the group branch's end-of-clip clipping of l1 removed",
        "core/schedule.py",
        "            if base + l1 >= t:\n                l1 = t - 1 - base\n",
        "",
        ("tests/core/test_schedule.py::test_the_plan_computes_what_the_model_description_computes",
         "tests/core/test_schedule.py::test_group_l1_is_clipped_to_the_last_frame",
         "tests/model/test_model.py")),
    Bug("windows that never release held frames",
        "runtime/windows.py",
        "        del held[: keep_from - first]\n        first = keep_from\n",
        "",
        ("tests/runtime/test_windows.py::"
         "test_pipeline_memory_is_bounded_by_the_window_not_the_video",)),
    Bug("audio packets released by PTS instead of seconds",
        "media/video_writer.py",
        "self._audio.copy_until(float(pts * self.time_base))",
        "self._audio.copy_until(float(pts))",
        ("tests/media/test_video.py::test_audio_is_interleaved_with_the_video",)),
    Bug("hirn-eval --crop taking the ground truth one LR row off",
        "train/evaluate.py",
        "gt = gt[:, ys.start * SCALE:ys.stop * SCALE,",
        "gt = gt[:, (ys.start + 1) * SCALE:(ys.stop + 1) * SCALE,",
        ("tests/train/test_evaluate.py::test_a_crop_scores_as_the_same_region_of_the_whole_frame",
         "tests/train/test_evaluate.py::test_crop_cli_scores_bicubic_on_the_matching_gt_window")),
    Bug("a CUDA-graph replay whose output is not copied before the next replay",
        "runtime/backends/torch_backend.py",
        "return output.clone() if self.cuda_graphs else output",
        "return output",
        ("tests/runtime/test_replay_buffers.py::test_replayed_steps_give_the_eager_output",)),
)


def stage(name: str) -> Path:
    root = STAGE / name
    shutil.rmtree(root, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / "src" / "hirn" / package, ignore=ignore)
    for folder in COPIED:
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def run_tests(root, tests: tuple[str, ...]) -> tuple[int, float]:
    """pytest's exit code (0: all passed, 1: some failed) and seconds."""
    env = dict(os.environ, PYTHONPATH=str(root / "src"), HIRN_SHARED=str(SHARED),
               OMP_NUM_THREADS="1")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *tests], cwd=root, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    (root / "pytest.log").write_text(done.stdout)
    return done.returncode, time.monotonic() - start


def check_copy_imports_itself(root) -> None:
    env = dict(os.environ, PYTHONPATH=str(root / "src"))
    where = subprocess.run([sys.executable, "-c", "import hirn.core; print(hirn.core.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout
    if not where.startswith(str(root)):
        sys.exit(f"the copy imports hirn from {where.strip()}, not from {root}")


def main() -> None:
    rows = []
    for bug in BUGS:
        root = stage("clean")
        check_copy_imports_itself(root)
        clean, _ = run_tests(root, bug.tests)
        if clean != 0:
            sys.exit(f"{bug.name}: its tests fail without the bug (see {root / 'pytest.log'})")
        root = stage("bug")
        path = root / "src" / "hirn" / bug.path
        text = path.read_text()
        if text.count(bug.old) != 1:
            sys.exit(f"{bug.name}: the text to change is not in {bug.path} once; update BUGS")
        path.write_text(text.replace(bug.old, bug.new))
        code, seconds = run_tests(root, bug.tests)
        log = (root / "pytest.log").read_text().splitlines()
        failed = [line.split(" ", 1)[1].split(" - ")[0] for line in log
                  if line.startswith("FAILED ")]
        rows.append({"bug": bug.name, "file": bug.path, "tests": list(bug.tests),
                     "caught": code == 1, "failed": failed, "seconds": round(seconds, 1)})
        print(rows[-1], flush=True)
    lines = ["# Planted bugs", "",
             "Each bug an audit of the suite once found unnoticed, planted by hand in a copy of "
             "the package (`python benchmarks/planted_bugs.py`); the tests named run against "
             "it (they pass on the unchanged copy).", "",
             "| bug | file | caught | tests that fail |", "| --- | --- | --- | --- |"]
    for r in rows:
        cases: dict[str, int] = {}  # a parametrized test once, with its failing cases
        for test in r["failed"]:
            base = test.split("[")[0]
            cases[base] = cases.get(base, 0) + 1
        lines.append(f"| {r['bug']} | `{r['file']}` | {'yes' if r['caught'] else '**no**'} | "
                     + "<br>".join(f"`{t}`" + (f" ({n} cases)" if n > 1 else "")
                                   for t, n in cases.items()) + " |")
    lines += ["", f"Machine: {machine()}"]
    write_results("planted_bugs", {"bugs": rows, "machine": machine()}, "\n".join(lines))
    if not all(r["caught"] for r in rows):
        sys.exit("some planted bugs were not caught")


if __name__ == "__main__":
    main()
