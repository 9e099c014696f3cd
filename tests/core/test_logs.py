"""hirn.core.logs: every command takes --quiet and --log-level, and they act alike."""

import logging

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hirn.core.logs import setup_logging
from hirn.export.cli import main as export_main
from hirn.runtime.cli import main as run_main
from hirn.train.cli import main as train_main
from hirn.train.evaluate import main as eval_main

COMMANDS = {"hirn-train": train_main, "hirn-run": run_main, "hirn-eval": eval_main,
            **{f"hirn-export {name}": command for name, command in export_main.commands.items()}}


@pytest.fixture(autouse=True)
def restore_logging():
    """Leave the hirn logger as found: other tests run in this process."""
    logger = logging.getLogger("hirn")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:], logger.level = handlers, level


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_the_same_quiet_and_log_level_options(name):
    options = {p.name: p for p in COMMANDS[name].params}
    assert options["quiet"].opts == ["-q", "--quiet"] and options["quiet"].is_flag
    assert list(options["log_level"].type.choices) == ["debug", "info", "warning", "error"]
    reference = {p.name: p for p in run_main.params}
    assert options["quiet"].help == reference["quiet"].help


def test_setup_routes_hirn_loggers_to_stderr_once(capsys):
    log = logging.getLogger("hirn.some.module")
    setup_logging("info")
    setup_logging("info")  # a second command in the same process: still one line per record
    log.info("reading %s", "clip.mp4")
    log.debug("hidden at info")
    assert capsys.readouterr().err == "reading clip.mp4\n"
    setup_logging("warning")
    log.info("hidden when quiet")
    log.warning("note: kept")
    assert capsys.readouterr().err == "note: kept\n"


@pytest.mark.parametrize("args, clip_line", [([], True), (["--quiet"], False),
                                             (["-q", "--log-level", "info"], True),
                                             (["--log-level", "WARNING"], False)])
def test_quiet_hides_information_lines_but_not_the_result(tmp_path, args, clip_line):
    folder = tmp_path / "vid4" / "walk" / "GT"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "000.png"), np.zeros((64, 64, 3), np.uint8))
    result = CliRunner().invoke(eval_main, ["--data-root", str(tmp_path), "--method", "bicubic",
                                            *args])
    assert result.exit_code == 0, result.output
    assert ("walk: 1 frames 16x16" in result.stderr) == clip_line
    assert "| walk | 1 |" in result.stdout  # the command's result
