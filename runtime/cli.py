"""``hirn-run``: upscale videos x4 with HiRN, in bounded memory, with clear errors.

The command only parses its options (runtime/options.py) into a BackendConfig and a
RunConfig and hands them to a :class:`~hirn.runtime.session.Session`, which does the work;
here each way a run ends becomes its message and exit code.
"""

from __future__ import annotations

import errno
from pathlib import Path

import click

from hirn.core.errors import HirnError, OutputExistsError, is_out_of_memory
from hirn.core.logs import logging_options
from hirn.runtime.backends.base import DEFAULT_BATCH, BackendConfig
from hirn.runtime.options import HELP, run_options
from hirn.runtime.pipeline import RunConfig, out_of_memory_message
from hirn.runtime.stops import (  # noqa: F401 (EXIT_*: the codes, where tests look for them)
    EXIT_HUNG_UP,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    said_and_code,
    stops_as_interrupts,
)


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@run_options
@click.pass_context
@logging_options
def main(ctx: click.Context, input: Path, output: Path | None, checkpoint, onnx_dir,
         engines_dir, backend, device, precision, compile_steps, cuda_graphs, codec, crf,
         pix_fmt, window, overlap, tile, tile_overlap, batch_size, threads, fps, overwrite, strict,
         resume, quiet, frames) -> None:
    backend_config = BackendConfig(backend=backend, checkpoint=checkpoint, onnx_dir=onnx_dir,
                                   engines_dir=engines_dir, device=device,
                                   precision=precision, threads=threads,
                                   batch_size=batch_size or DEFAULT_BATCH,
                                   compile_steps=compile_steps, cuda_graphs=cuda_graphs)
    try:
        run_config = RunConfig(window=window, overlap=overlap, codec=codec, crf=crf, fps=fps,
                               overwrite=overwrite, quiet=quiet, strict=strict, tile=tile,
                               tile_overlap=tile_overlap, resume=resume, pix_fmt=pix_fmt,
                               fit_batch=batch_size is None)
    except HirnError as error:  # a tile size or overlap that cannot run
        raise click.UsageError(str(error)) from error
    demo = str(input) == "demo"
    _check_usage(input, output, run_config, demo, frames)
    try:
        with stops_as_interrupts(), _frames_to_stdout(output, demo):
            if demo:
                _demo(output, backend_config, frames, quiet)
            else:
                _upscale(input, output, backend_config, run_config)
    except KeyboardInterrupt as stop:
        said, code = said_and_code(stop)
        kept = ("finished windows are kept beside the output (--resume)" if run_config.resume
                else "finished outputs of a batch are kept")
        click.echo(f"\n{said}: the output being written was removed ({kept}: run the same "
                   f"command again to go on); the input is untouched", err=True)
        ctx.exit(code)
    except OutputExistsError as error:
        raise click.ClickException(f"{error.path} {error.why}: pass --overwrite to replace "
                                   f"it, or choose another output") from error
    except HirnError as error:
        raise click.ClickException(_message(error)) from error
    except Exception as error:  # outside a file's windows (those say more)
        if not is_out_of_memory(error):
            raise
        raise click.ClickException(out_of_memory_message(
            run_config, backend_config.device, backend_config.batch_size)) from error


def _check_usage(input: Path, output: Path | None, config: RunConfig, demo: bool,
                 frames: int | None) -> None:
    """Options that do not go together, refused before anything loads."""
    if frames is not None and not demo:
        raise click.UsageError("--frames applies to hirn-run demo only")
    if config.resume and (demo or "-" in (str(input), str(output))):
        raise click.UsageError("--resume needs an input file and an output path (not the "
                               "demo, not a pipe): its segments are kept beside the output")
    if not demo and output is None:
        raise click.UsageError("pass the output with -o OUTPUT")


def _upscale(input: Path, output: Path, backend: BackendConfig, config: RunConfig) -> None:
    from hirn.runtime.session import Session

    with Session(backend, config, report=click.echo) as session:
        session.run(input, output)


def _demo(output: Path | None, backend: BackendConfig, frames: int | None,
          quiet: bool) -> None:
    from hirn.runtime.demo import run_demo
    from hirn.runtime.session import resolve_backend

    run_demo(output or Path("hirn-demo"), resolve_backend(backend, quiet), frames=frames,
             quiet=quiet)


def _frames_to_stdout(output: Path | None, demo: bool):
    """With ``-o -``, standard output carries the Y4M stream only: anything else printed
    (the summary, a library's messages) goes to standard error."""
    from contextlib import nullcontext

    from hirn.media import y4m

    return y4m.frames_to_stdout() if output is not None and y4m.is_pipe(output) and not demo \
        else nullcontext()


def _message(error: BaseException) -> str:
    """The error's text, with a hint where the cause was a file-size limit."""
    text = str(error)
    cause = error.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.EFBIG:
        text += (" (the file-size limit of this process or file system was reached: write to "
                 "another disk, or raise the limit, e.g. ulimit -f unlimited)")
    return text


if __name__ == "__main__":  # python -m hirn.runtime.cli (e.g. under torchrun)
    main()
