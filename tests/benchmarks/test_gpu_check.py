"""benchmarks/gpu_check.py: the bundle it prepares, and the check itself in its reduced CPU
mode, so that the one command meant for a rare GPU machine cannot rot here."""

import inspect
import json
import os
import subprocess
import sys

import pytest
from support import REFERENCE_WEIGHTS, REPO, needs_shared

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = ["environment", "gpu tests", "dcn kernel", "torch backend", "hirn-run"]


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)


@needs_shared(REFERENCE_WEIGHTS)
def test_prepare_then_the_reduced_check(tmp_path):
    bundle = tmp_path / "bundle"
    prepared = _script("--prepare", str(bundle), "--no-wheels")  # no network in the suite
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    size_line = prepared.stdout.strip().splitlines()[-1]
    print(size_line)
    mib = float(size_line.split(" files, ")[1].split(" MiB")[0])
    assert mib < 60
    manifest = json.loads((bundle / "bundle.json").read_text())
    files = manifest["files"]
    assert "shared/reference/hirn_random_seed1.pth" in files
    assert sum(f.startswith("shared/data/vid4/calendar/") for f in files) == 16
    assert any(f.endswith("libhirn_dcn.so") for f in files) or any(
        "kernel library not prebuilt" in note for note in manifest["notes"])

    out = tmp_path / "out"
    run = _script("--out", str(out), "--bundle", str(bundle), "--reduced")
    assert run.returncode == 0, run.stdout + run.stderr
    records = {r["part"]: r for r in json.loads((out / "gpu_check.json").read_text())["parts"]}
    assert list(records) == PARTS
    status = {name: r["status"] for name, r in records.items()}
    assert status == {"environment": "ok", "gpu tests": "skipped", "dcn kernel": "skipped",
                      "torch backend": "ok", "hirn-run": "ok"}, records
    assert "no CUDA GPU" in records["gpu tests"]["reason"]
    assert "no CUDA GPU" in records["dcn kernel"]["reason"]
    torch_part = records["torch backend"]["result"]
    assert {r["clip"] for r in torch_part["runs"]} == {"calendar", "synthetic 96x64"}
    assert all(r["finite"] and r["fps"] > 0 for r in torch_part["runs"])
    assert torch_part["skipped"] == {
        f"{variant} / {clip}": "needs CUDA" for clip in ("calendar", "synthetic 96x64")
        for variant in ("eager fp16", "compiled fp16", "cuda graphs fp16")}
    hirn_run = records["hirn-run"]["result"]
    assert (hirn_run["frames_out"], hirn_run["size_out"]) == (2, [256, 256])
    markdown = (out / "gpu_check.md").read_text()
    assert "| torch backend | ok |" in markdown and "| gpu tests | skipped |" in markdown


def test_a_failing_part_says_where_it_stopped_and_the_next_still_runs(tmp_path,
                                                                       monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check
    from gpu_check_parts import Check, Skipped

    def measures_then_fails(check, result):
        result["measured"] = 1.5
        raise RuntimeError("the kernel returned NaN")

    def cannot_run_here(check, result):
        raise Skipped("needs CUDA")

    ran = []
    check = Check(tmp_path, None, tmp_path, {}, cuda=False, reduced=True)
    written = []
    records = gpu_check.run_parts(check, {
        "first": measures_then_fails, "second": cannot_run_here,
        "third": lambda check, result: ran.append(True)}, written.append)
    assert [r["status"] for r in records] == ["failed", "skipped", "ok"] and ran
    first = records[0]
    assert first["result"] == {"measured": 1.5}  # what it measured before it stopped
    assert first["error"] == "RuntimeError: the kernel returned NaN"
    line = inspect.getsourcelines(measures_then_fails)[1] + 2  # its raise
    assert first["stopped_at"] == f"test_gpu_check.py:{line} in measures_then_fails"
    assert len(written) == 3  # the results are written after every part
    markdown = gpu_check.markdown(records)
    assert "| first | failed |" in markdown and f"stopped at test_gpu_check.py:{line}" in markdown


def test_the_gpu_tests_part_reports_each_test(tmp_path, monkeypatch):
    """The pytest part, pointed at two gpu-marked tests (one failing) and run as if on a GPU:
    its counts, the tests that did not pass, the log, and a failure for the part."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check_parts as parts

    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "test_fake.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_good():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_bad():\n    assert 1 == 2\n\ndef test_not_gpu():\n"
        "    pass\n")
    monkeypatch.setattr(parts, "GPU_TESTS", folder)
    # the pytest it starts is no xdist worker: pytest-benchmark, where installed, would read
    # PYTEST_XDIST_WORKER and end the output with its warning instead of the summary
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    check = parts.Check(tmp_path, None, tmp_path, env, cuda=True, reduced=False)
    result = {}
    with pytest.raises(AssertionError, match="1 failed, 1 passed"):
        parts.gpu_tests(check, result)
    assert result["counts"] == {"FAILED": 1, "PASSED": 1}
    assert [name.split("::")[1] for name in result["not_passed"]] == ["test_bad"]
    assert "assert 1 == 2" in (tmp_path / result["log"]).read_text()
