"""One run of ``hirn-run``: the object that owns the runners from first need to close.

A :class:`Session` resolves the backend once (the fastest CPU path where the options leave it
open), makes the runner when the first input is known good and its FP32 twin only if a
half-precision window overflows, upscales a file, a pipe or this process's share of a batch
folder, and closes every runner it made. ``hirn-run`` parses its options into one and calls
:meth:`Session.run`; a program can do the same::

    with Session(BackendConfig(checkpoint=Path("hirn.pth")), RunConfig()) as session:
        session.upscale_file("clip.mp4", "clip_x4.mkv")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hirn.core.errors import BatchError, SinkError
from hirn.runtime.backends.base import BackendConfig, Runner
from hirn.runtime.batch import BatchReport, Shard, is_batch, run_batch
from hirn.runtime.pipeline import RunConfig, RunStats, upscale_file
from hirn.runtime.progress import info, summary


class Session:
    """Runs inputs through one model with one set of options.

    Args:
        backend: which weights, backend, device and precision (resolved here: the backend
            the weights need, and on the CPU the fastest path where the options leave it
            open; an information line says which).
        config: how inputs are windowed, tiled and written.
        shard: this process's place among torchrun's (default: from the environment).
        report: where summary lines go (``hirn-run``: standard output, or standard error
            when the frames go to standard output).
    """

    def __init__(self, backend: BackendConfig, config: RunConfig, *,
                 shard: Shard | None = None, report: Callable[[str], None] = print):
        self.shard = shard or Shard.from_env()
        self.backend = _for_this_process(resolve_backend(backend, config.quiet), self.shard)
        self.config = config
        self.report = report
        self._runner: Runner | None = None
        self._fp32_runner: Runner | None = None
        self._model: dict | None = None

    # --- runners, made on first need --------------------------------------------------------

    def runner(self) -> Runner:
        """The model's runner, made on the first call."""
        if self._runner is None:
            from hirn.runtime.backends import create_runner

            self._runner = create_runner(self.backend)
            info(f"{self.shard.label}{self._runner.describe()}; windows write "
                 f"{self.config.window} frames and read {self.config.overlap} more on each "
                 f"side", self.config.quiet)
        return self._runner

    def fp32_runner(self) -> Runner:
        """The same model in FP32, for windows that overflowed in FP16 (made once, if ever)."""
        if self._fp32_runner is None:
            from hirn.runtime.backends import create_runner

            self._fp32_runner = create_runner(replace(self.backend, precision="fp32"))
            info(f"{self.shard.label}computing again in FP32 with "
                 f"{self._fp32_runner.describe()}", self.config.quiet)
        return self._fp32_runner

    def close(self) -> None:
        """Release every runner made (engines, compiled graphs, device memory)."""
        for runner in (self._runner, self._fp32_runner):
            if runner is not None:
                runner.close()
        self._runner = self._fp32_runner = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- work -------------------------------------------------------------------------------

    def run(self, input: Path, output: Path) -> None:
        """``hirn-run INPUT -o OUTPUT``: a batch folder (this process's share), or one input
        (by the first process only)."""
        if str(input) != "-" and input.is_dir() and is_batch(input):
            if str(output) == "-":
                raise SinkError(f"{input} is a folder of videos: -o - takes one input (a "
                                 f"video, a folder of images, or - for a Y4M pipe)")
            report = self.upscale_batch(input, output)
            if report.failed:
                listing = "\n  ".join(f"{video.name}: {why}" for video, why in report.failed)
                raise BatchError(f"{len(report.failed)} videos failed:\n  {listing}")
            return
        if self.shard.rank > 0:
            info(f"{self.shard.label}a single input is upscaled by the first process only",
                 self.config.quiet)
            return
        self.upscale_file(input, output)

    def upscale_file(self, input: str | Path, output: str | Path,
                     overwrite: bool | None = None) -> RunStats:
        """Upscale one video, image folder or pipe into ``output``; a summary line is
        reported."""
        config = self.config if overwrite is None else replace(self.config,
                                                               overwrite=overwrite)
        stats = upscale_file(input, output, self.runner, config,
                             batch_size=self.backend.batch_size, label=self.shard.label,
                             get_fp32_runner=self.fp32_runner, model=self._model_identity())
        self.report(self.shard.label + summary(stats.frames, stats.seconds, output))
        return stats

    def upscale_batch(self, folder: Path, outdir: Path) -> BatchReport:
        """This process's share of the videos in ``folder``, into ``outdir``; a file that
        fails is reported and the batch goes on."""
        report = run_batch(folder, outdir, self.config.codec, self.config.overwrite,
                           self.shard, self.upscale_file)
        self.report(report.line(self.shard))
        return report

    def _model_identity(self) -> dict | None:
        """What decides the model's output, recorded in a --resume work folder."""
        if self.config.resume and self._model is None:
            from hirn.runtime.resume import model_identity

            self._model = model_identity(self.backend)
        return self._model


def resolve_backend(config: BackendConfig, quiet: bool = False) -> BackendConfig:
    """The backend inferred from the weights given, and on the CPU the fastest path where
    backend or precision were left open (an information line says which); the backend
    checks its own options when its runner is made (``create_runner``)."""
    from hirn.runtime.backends import fastest_cpu_path
    from hirn.runtime.weights import infer_backend

    config, path = fastest_cpu_path(infer_backend(config), config.backend is not None)
    if path:
        info(f"CPU path: {path}", quiet)
    return config


def _for_this_process(backend: BackendConfig, shard: Shard) -> BackendConfig:
    """Under torchrun, each process on a machine takes its own GPU."""
    if backend.device == "cuda" and shard.world_size > 1:
        return replace(backend, device=f"cuda:{shard.local_rank}")
    return backend
