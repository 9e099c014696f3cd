"""Every command line the README shows is one its commands accept.

Each line of the README's shell blocks that runs ``hirn-train``, ``hirn-export``, ``hirn-run``,
``hirn-eval``, ``hirn-prepare`` or ``torchrun`` (pip, cmake, ruff and pytest are not ours) is
parsed by the command itself (click's ``make_context``, torchrun's own parser), with its
placeholders (``CKPT``, ``graphs/``, ...) replaced by tiny real files, and its ``--help`` is run: an
unknown option, a missing required one or a value out of its choices fails here. A real run
of each would take minutes on a CPU and needs a GPU, TensorRT or Vid4 for several; the
commands' own tests run them. The options the prose names in inline code are checked too.
"""

import re
import shlex
from importlib import metadata

import click
import pytest
import yaml
from click.testing import CliRunner
from support import REPO

README = REPO / "README.md"
PROGRAMS = ("hirn-train", "hirn-export", "hirn-run", "hirn-eval", "hirn-prepare", "torchrun")


def _split_alternatives(line: str) -> list[str]:
    """``a --x X | --y Y`` and ``a --x X (or --y Y)``: one line per alternative, each
    alternative taking the place of the first one's last option."""
    line = re.sub(r"\s+\(or (.+)\)\s*$", r" | \1", line)
    first, *others = [part.strip() for part in line.split(" | ")]
    if not others:
        return [first]
    tokens = shlex.split(first)
    last_option = max(i for i, t in enumerate(tokens) if t.startswith("-"))
    base = shlex.join(tokens[:last_option])
    return [first, *(f"{base} {other}" for other in others)]


def readme_commands(text: str) -> list[str]:
    """The command lines of the README's shell blocks (bash or plain), one per alternative."""
    commands = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if lang not in ("", "bash", "sh", "console"):
            continue
        for line in block.splitlines():
            line = re.split(r"\s+(?:#|->)\s", " " + line)[0].strip()  # comments, outputs
            for part in line.split("&&"):
                part = part.strip()
                if part.split(" ", 1)[0] in PROGRAMS:
                    commands += _split_alternatives(part)
    return commands


COMMANDS = readme_commands(README.read_text())


def _inline_commands(text: str) -> list[str]:
    """Inline code spans that start with one of the programs, outside code blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return sorted({s for s in spans if s.split(" ", 1)[0] in PROGRAMS[:-1]})


def _command(program: str) -> click.Command:
    """The click command behind a console script (pyproject's [project.scripts]); hirn-run's
    script is a launcher that loads ``hirn.runtime.cli.main`` (runtime/stops.py)."""
    (entry,) = metadata.entry_points(group="console_scripts", name=program)
    command = entry.load()
    if entry.value == "hirn.runtime.stops:hirn_run":
        from hirn.runtime.cli import main as command
    return command


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny real stand-ins for the README's placeholders, and a folder for its outputs."""
    import torch

    from hirn.train import HiRN

    root = tmp_path_factory.mktemp("readme")
    ckpt = root / "hirn.pth"
    torch.save({"params": HiRN(mid_channels=4, num_blocks=1).state_dict()}, ckpt)
    config = root / "config.yml"
    config.write_text(yaml.safe_dump({"datasets": {"train": {"dataroot_gt": str(root)}}}))
    video = root / "video.mp4"
    video.write_bytes(b"")  # parsing never opens it
    for folder in ("graphs", "engines"):
        (root / folder).mkdir()
    return {"CONFIG.yml": config, "CKPT": ckpt, "video.mp4": video,
            "graphs/": root / "graphs", "engines/": root / "engines", "_out": root / "out"}


def _real_args(args: list[str], files: dict) -> list[str]:
    """Placeholders -> tiny real files; repository paths -> absolute (they must exist);
    other paths (outputs) -> a scratch folder."""
    out = []
    for arg in args:
        if arg in files:
            out.append(str(files[arg]))
        elif arg.startswith("-") or "/" not in arg and "." not in arg:
            out.append(arg)  # an option or a plain value (demo, vid4, 64x64)
        elif (REPO / arg.split("/")[0]).is_dir() and arg.split("/")[0] != "runs":
            assert (REPO / arg).exists(), f"the README names {arg}, which does not exist"
            out.append(str(REPO / arg))
        else:
            out.append(str(files["_out"] / arg))
    return out


def parse(line: str, files: dict) -> tuple[click.Command, list[str]]:
    """Parse a README line as its command does; return the (sub)command and its arguments.

    Raises click's UsageError (or SystemExit from torchrun's parser) for a stale line."""
    program, *args = shlex.split(line)
    if program == "torchrun":
        from torch.distributed.run import get_args_parser

        launch = get_args_parser().parse_args(args)
        assert launch.module, f"{line}: hirn-train runs under torchrun as -m hirn.train.cli"
        assert launch.training_script == "hirn.train.cli", line
        command, args = _command("hirn-train"), launch.training_script_args
    else:
        command = _command(program)
    if isinstance(command, click.Group):
        name, *args = args
        assert name in command.commands, f"{line}: {program} has no command {name!r}"
        command = command.commands[name]
    args = _real_args(args, files)
    command.make_context(program, list(args))
    return command, args


def test_the_readme_shows_every_command():
    """The extraction finds what the README shows (an empty list would pass everything)."""
    shown = {" ".join(shlex.split(c)[:2 if c.startswith("hirn-export") else 1])
             for c in COMMANDS}
    assert shown == {"hirn-train", "torchrun", "hirn-run", "hirn-eval", "hirn-prepare",
                     "hirn-export onnx",
                     "hirn-export check", "hirn-export engine", "hirn-export compare"}
    assert any("--onnx graphs/" in c for c in COMMANDS)  # the alternatives, each one
    assert any("--method bicubic" in c and "--checkpoint" not in c for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses_and_has_help(line, files):
    command, args = parse(line, files)
    result = CliRunner().invoke(command, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("line", _inline_commands(README.read_text()))
def test_options_named_in_the_prose_exist(line):
    """``hirn-run ... --device cuda --precision fp16`` and the like: every option named is
    the command's, and ``a|b|c`` values are among its choices."""
    program, *words = line.split()
    command = _command(program)
    if isinstance(command, click.Group) and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    options = _options(command)
    for i, word in enumerate(words):
        for name in word.split("/"):  # -q/--quiet
            if name.startswith("-"):
                assert name in options, f"{line}: {program} has no option {name}"
        value = words[i + 1] if i + 1 < len(words) else ""
        param = options.get(word)
        if param is not None and isinstance(param.type, click.Choice) and "|" in value:
            assert set(value.split("|")) <= set(param.type.choices), (line, param.type.choices)


def _every_command() -> dict[str, click.Command]:
    """Each command a user runs: the console scripts, hirn-export's by subcommand."""
    out = {}
    for program in PROGRAMS[:-1]:
        command = _command(program)
        subcommands = command.commands if isinstance(command, click.Group) else {"": command}
        out.update({f"{program} {name}".strip(): c for name, c in subcommands.items()})
    return out


def _option_spans(text: str) -> list[str]:
    """Inline code spans of the prose that are options alone (``--window``, ``-q/--quiet``)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return sorted({s for s in spans if re.match(r"--?[a-z]", s)})  # not `-` (a pipe)


def _options(command: click.Command) -> dict[str, click.Parameter]:
    params = command.get_params(click.Context(command))  # --help included
    return {name: p for p in params for name in p.opts + p.secondary_opts}


@pytest.mark.parametrize("span", _option_spans(README.read_text()))
def test_options_the_prose_names_alone_exist(span):
    """``--window``, ``--log-level debug|info|warning|error``: some command has the option,
    with those choices."""
    name, *value = span.split()
    found = [_options(c).get(n) for c in _every_command().values() for n in name.split("/")]
    found = [p for p in found if p is not None]
    assert found, f"no command has {name}"
    if value and "|" in value[0]:
        assert any(set(value[0].split("|")) == set(getattr(p.type, "choices", ()))
                   for p in found), span


def test_every_command_takes_quiet_and_log_level():
    """The README: "Every command takes -q/--quiet ... and --log-level"."""
    for name, command in _every_command().items():
        options = _options(command)
        assert {"-q", "--quiet", "--log-level"} <= set(options), name


@pytest.mark.parametrize("line", [
    "hirn-export engine graphs/ -o engines/",                           # the stale line
    "hirn-run video.mp4 -o video_x4.mp4 --weights CKPT",                # an unknown option
    "hirn-export onnx CKPT -o graphs/ --dcn cuda",                      # a value out of choices
])
def test_a_stale_line_fails(line, files):
    with pytest.raises(click.UsageError):
        parse(line, files)


def test_the_readme_configs_load():
    from hirn.train.config import load_config

    configs = {a for c in COMMANDS for a in shlex.split(c) if a.startswith("configs/")}
    assert configs  # the training lines name the shipped configs
    for path in configs:
        load_config(REPO / path)


def _steps(lines: list[str]) -> list[list[str]]:
    """The ruff and pytest commands of shell lines, without ``python -m`` and the options
    that only shape the output (``--durations``)."""
    steps = []
    for line in lines:
        for part in line.split("#")[0].split("&&"):
            words = shlex.split(part.split("||")[0])
            if words[:2] == ["python", "-m"]:
                words = words[2:]
            if words and words[0] in ("ruff", "pytest"):
                steps.append([w for w in words if not w.startswith("--durations")])
    return steps


def test_the_readme_runs_the_tests_as_ci_does():
    """The README's test line is what .ci/run runs (the two pytest runs included)."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    shown = [line for line in README.read_text().splitlines() if '.[test]"' in line]
    assert len(shown) == 1, shown
    assert _steps(shown) == _steps(ci)
    assert ["pytest", "-m", "serial"] in _steps(ci)
