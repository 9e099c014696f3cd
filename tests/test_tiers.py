"""The test tiers of tests/conftest.py: what the rule marks ``slow`` (a test that starts a
process or trains, itself, through a helper or through a fixture), and every test its tables
name exists (a renamed test would silently leave the tables, and its tier)."""

import os
import subprocess
import sys

import pytest
from conftest import SERIAL, SLOW
from support import REPO

# Each test's marks, printed once the whole tree is collected (nothing deselected).
REPORT = """
import sys, pytest
class Report:
    def pytest_collection_finish(self, session):
        for item in session.items:
            tiers = sorted({m.name for m in item.iter_markers()} & {"slow", "serial"})
            name = item.path.name + "::" + getattr(item, "originalname", item.name)
            print("TIER", name, *tiers)
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                     plugins=[Report()]))
"""


@pytest.fixture(scope="module")
def tiers() -> dict[str, set[str]]:
    """``file.py::test_name`` -> its tier marks (the cases of a test together)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    result = subprocess.run([sys.executable, "-c", REPORT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("TIER "):
            name, *marks = line.split()[1:]
            found.setdefault(name, set()).update(marks)
    return found


def test_every_test_the_tables_name_exists(tiers):
    assert set(SLOW) - set(tiers) == set()
    assert set(SERIAL) - set(tiers) == set()


@pytest.mark.parametrize("name", [
    "test_demo.py::test_demo_command_writes_the_video_picture_and_psnr",  # run_cli itself
    "test_cli.py::test_ctrl_c_stops_with_130_and_leaves_nothing",  # Popen in a helper
    "test_driver.py::test_onnxruntime_clip_matches_original",  # hirn-export in a fixture
    "test_training.py::test_resumed_run_reaches_the_same_weights_bit_for_bit",  # train()
    "test_tiles.py::test_hirn_run_recomputes_backward_maps_when_only_that_fits",  # SLOW
])
def test_slow_tests(tiers, name):
    assert tiers[name] == {"slow"}


def test_serial_tests_are_slow_too_and_the_rest_fast(tiers):
    assert {name for name, marks in tiers.items() if "serial" in marks} == set(SERIAL)
    assert all(marks == {"slow", "serial"} for name, marks in tiers.items() if name in SERIAL)
    # in this process, and a training test that does not train
    assert tiers["test_schedule.py::test_steps_read_only_what_is_already_computed"] == set()
    assert tiers["test_training.py::test_charbonnier_by_hand"] == set()
