"""``hirn-train CONFIG.yml``: train HiRN with the published recipe.

One process: ``hirn-train configs/reds_hirn_x4.yml``. Several (DDP, gloo on CPU,
NCCL on GPU): ``torchrun --nproc-per-node 4 -m hirn.train.cli configs/...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hirn.core.errors import HirnError
from hirn.core.logs import logging_options


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for logs, checkpoints and resume states "
                   "[default: experiments/<name>].")
@click.option("--resume", metavar="auto|PATH",
              help="Continue a run: 'auto' takes the latest state in the work dir (a fresh "
                   "start when there is none), or give a training_states/<iter>.state file.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda (each torchrun process takes its LOCAL_RANK GPU) or cuda:N.")
@click.option("--stop-after", type=click.IntRange(min=1), metavar="ITER",
              help="Stop after this iteration, saving a resume state (split a run into jobs).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar (--quiet hides it too).")
@logging_options
def main(config: Path, work_dir: Path | None, resume: str | None, device: str,
         stop_after: int | None, progress: bool, quiet: bool) -> None:
    """Train HiRN from CONFIG.yml (BasicSR-style option names; see configs/)."""
    from .config import load_config
    from .loop import train

    try:
        cfg = load_config(config)
        result = train(cfg, work_dir or Path("experiments") / cfg.name, device=device,
                       resume=resume, stop_after=stop_after, progress=progress and not quiet)
    except HirnError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        from . import distributed
        distributed.close()
    click.echo(f"stopped after iteration {result.iteration}; outputs in {result.work_dir}",
               err=True)


if __name__ == "__main__":  # python -m hirn.train.cli (torchrun -m)
    sys.exit(main())
