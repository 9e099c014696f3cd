"""``hirn-train CONFIG.yml``: train HiRN with the published recipe.

One process: ``hirn-train configs/reds_hirn_x4.yml``. Several (DDP, gloo on CPU,
NCCL on GPU): ``torchrun --nproc-per-node 4 -m hirn.train.cli configs/...``.
Ctrl-C (SIGINT) or SIGTERM saves a resume state at the end of the iteration in
progress, prints the command that continues the run and exits 130 or 143.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hirn.core.errors import HirnError
from hirn.core.logs import logging_options

if TYPE_CHECKING:  # the command's --help stays free of torch
    from .state import Interruption


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for logs, checkpoints and resume states "
                   "[default: experiments/<name>].")
@click.option("--resume", metavar="auto|PATH",
              help="Continue a run: 'auto' takes the latest state in the work dir (a fresh "
                   "start, said on stderr, when there is none), or give a "
                   "training_states/<iter>.state file.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda (each torchrun process takes its LOCAL_RANK GPU) or cuda:N.")
@click.option("--stop-after", type=click.IntRange(min=1), metavar="ITER",
              help="Stop after this iteration, saving a resume state (split a run into jobs).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (--quiet hides it too).")
@logging_options
def main(config: Path, work_dir: Path | None, resume: str | None, device: str,
         stop_after: int | None, progress: bool, quiet: bool) -> None:
    """Train HiRN from CONFIG.yml (BasicSR-style option names; see configs/).

    Ctrl-C or SIGTERM stops at the end of the iteration in progress with a resume state
    (a second Ctrl-C stops at once, keeping the previous state), prints the command that
    continues the run, and exits 130 (SIGINT) or 143 (SIGTERM).
    """
    ctx = click.get_current_context()
    try:
        from . import distributed
        from .config import load_config
        from .loop import train

        cfg = load_config(config)
    except HirnError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:  # before training takes the signals over
        click.echo("\nhirn-train: interrupted before training started; nothing was saved",
                   err=True)
        ctx.exit(128 + signal.SIGINT)
    work_dir = work_dir or Path("experiments") / cfg.name
    with _signals_ignored():
        try:
            result = train(cfg, work_dir, device=device, resume=resume, stop_after=stop_after,
                           progress=progress and not quiet)
        except HirnError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            distributed.close()
        stop = result.interrupted
        if stop is None:
            click.echo(f"stopped after iteration {result.iteration}; outputs in "
                       f"{result.work_dir}", err=True)
            return
        if distributed.from_env().main:
            click.echo(interrupted_message(stop, resume_command(ctx, work_dir)), err=True)
    ctx.exit(128 + stop.signum)


@contextlib.contextmanager
def _signals_ignored():
    """SIGINT and SIGTERM ignored, outside train()'s own handling (restored on exit): a late
    signal (a repeated Ctrl-C, torchrun stopping the other processes) must not kill the
    process before it has said how to resume."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)
                if main_thread}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted_message(stop: Interruption, command: str) -> str:
    """What a signal did to the run, and the command that goes on with it."""
    if stop.saved:
        what = (f"stopped after iteration {stop.iteration} and saved its resume state, "
                f"{stop.state}")
    elif stop.during == "setup":
        what = "stopped before the first iteration; nothing new was saved"
    elif stop.during == "saving":
        what = (f"interrupted again while saving iteration {stop.iteration}: that state was "
                "not written")
    else:
        what = f"interrupted again during iteration {stop.iteration}: stopped without saving it"
    lines = [f"hirn-train: {stop.name}: {what}"]
    if not stop.saved:
        lines.append(f"the latest resume state, {stop.state}, is intact" if stop.state
                     else "there is no resume state yet: the command below starts over")
    lines.append(f"to resume: {command}")
    return "\n".join(lines)


def resume_command(ctx: click.Context, work_dir: Path) -> str:
    """This command line, with the work dir named and ``--resume auto``: the options given
    are kept (under torchrun, its process count too)."""
    args = [str(ctx.params["config"]), "--work-dir", str(work_dir), "--resume", "auto"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if (not isinstance(param, click.Option) or param.name in ("work_dir", "resume")
                or value is None or value == param.default):
            continue
        if param.is_flag:
            names = param.opts if value else param.secondary_opts
            if names:  # a plain flag left off (click 8.2+ keeps no False default) has none
                args.append(max(names, key=len))
        else:
            args += [max(param.opts, key=len), str(value)]
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return shlex.join(["hirn-train", *args])
    local = os.environ.get("LOCAL_WORLD_SIZE", str(world))
    nodes = world // int(local)
    command = shlex.join(["torchrun", "--nproc-per-node", local, "-m", "hirn.train.cli", *args])
    if nodes > 1:  # the rendezvous options are torchrun's: this process does not see them
        command += f"   (on each of the {nodes} nodes, with the same torchrun options)"
    return command


if __name__ == "__main__":  # python -m hirn.train.cli (torchrun -m)
    sys.exit(main())
