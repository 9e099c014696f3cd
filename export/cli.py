"""``hirn-export``: per-step ONNX graphs from a checkpoint, and checks of exported folders."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from hirn.core.errors import HirnError
from hirn.core.logs import logging_options

logger = logging.getLogger(__name__)


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export HiRN to per-step ONNX graphs and TensorRT engines."""


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="folder to create (graphs + manifest.json)")
@click.option("--dcn", type=click.Choice(["onnx", "decomposed", "plugin"]), default="onnx",
              show_default=True,
              help="deformable conv as the standard DeformConv op, as plain ops (GridSample), "
                   "or as our TensorRT plugin op HirnDeformConv")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              show_default=True, help="fp16: features and convolutions in FP16, flows FP32")
@click.option("--opset", type=int, default=19, show_default=True)
@click.option("--param-key", type=click.Choice(["params", "params_ema"]), default=None,
              help="which weights of the checkpoint (default: params, else the only one)")
@click.option("--overwrite", is_flag=True, help="replace OUTPUT if it exists")
@logging_options
def onnx(checkpoint: Path, output: Path, dcn: str, precision: str, opset: int,
         param_key: str | None, overwrite: bool, quiet: bool) -> None:
    """Write the per-step graphs of CHECKPOINT (a .pth, or 'default' for the built-in
    weights) into a new folder."""
    from hirn.core.default_weights import resolve_checkpoint
    from hirn.model import load_model

    from .onnx_export import ExportOptions, export_onnx

    try:
        options = ExportOptions(dcn=dcn, precision=precision, opset=opset, overwrite=overwrite)
        if output.exists() and not overwrite:
            raise click.ClickException(f"{output} already exists; pass --overwrite to replace it")
        checkpoint = resolve_checkpoint(checkpoint)
        model = load_model(checkpoint, param_key=param_key)
        manifest = export_onnx(checkpoint, output, options, model=model,
                               progress=lambda name: logger.info("  exporting %s", name))
    except (HirnError, ValueError) as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {len(manifest['graphs'])} graphs ({precision}, dcn={dcn}, "
               f"opset {opset}) to {output}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@logging_options
def check(folder: Path, quiet: bool) -> None:
    """Verify FOLDER against its manifest (files present, sizes and SHA-256 equal)."""
    from .manifest import verify_folder

    try:
        manifest = verify_folder(folder)
    except HirnError as exc:
        raise _fail(exc) from exc
    click.echo(f"{folder}: {len(manifest['graphs'])} graphs intact "
               f"({manifest['precision']}, dcn={manifest['dcn']}, opset {manifest['opset']}, "
               f"exported by hirn {manifest['tools'].get('hirn', '?')})")


@main.command()
@click.argument("onnx_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="engine folder (created; engines already there with the same key are kept)")
@click.option("--min", "min_size", required=True, help="smallest LR frame, HxW (e.g. 64x64)")
@click.option("--opt", "opt_size", required=True, help="LR size to tune for, HxW (e.g. 180x320)")
@click.option("--max", "max_size", required=True, help="largest LR frame, HxW (e.g. 540x960)")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="must match the ONNX folder (default: the folder's)")
@click.option("--dcn", type=click.Choice(["builtin", "plugin"]), default=None,
              help="TensorRT's own DeformConv plugin or our HirnDeformConv (default: what the "
                   "folder was exported with)")
@click.option("--max-batch", type=int, default=4, show_default=True,
              help="frames per call of the batchable graphs (encode, flow, compose, decode)")
@click.option("--workspace", "workspace_mib", type=int, default=None,
              help="builder workspace limit in MiB (default: TensorRT's)")
@click.option("--plugin-lib", type=click.Path(path_type=Path), default=None,
              help="libhirn_plugins.so, for folders exported with --dcn plugin")
@logging_options
def engine(onnx_dir: Path, output: Path, min_size: str, opt_size: str, max_size: str,
           precision: str | None, dcn: str | None, max_batch: int, workspace_mib: int | None,
           plugin_lib: Path | None, quiet: bool) -> None:
    """Build one TensorRT engine per graph of ONNX_DIR into OUTPUT (needs TensorRT and a GPU)."""
    from .engine import EngineOptions, build_engines, describe, parse_size

    try:
        options = EngineOptions(parse_size(min_size), parse_size(opt_size), parse_size(max_size),
                                precision, dcn, max_batch, workspace_mib, plugin_lib)
        manifest = build_engines(onnx_dir, output, options,
                                 progress=lambda message: logger.info("  %s", message))
    except HirnError as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {describe(manifest)} to {output}")


@main.command()
@click.argument("onnx_dir", type=click.Path(path_type=Path))
@click.argument("engine_dir", type=click.Path(path_type=Path))
@click.option("--height", type=int, default=None, help="LR height (default: the profile's opt)")
@click.option("--width", type=int, default=None, help="LR width (default: the profile's opt)")
@click.option("--batch", type=int, default=None,
              help="batch of the batchable graphs (default: 2, within the profile)")
@click.option("--atol", type=float, default=None,
              help="absolute tolerance (default: per precision)")
@click.option("--rtol", type=float, default=None,
              help="tolerance relative to the reference's largest magnitude (default: per "
                   "precision)")
@logging_options
def compare(onnx_dir: Path, engine_dir: Path, height: int | None, width: int | None,
            batch: int | None, atol: float | None, rtol: float | None, quiet: bool) -> None:
    """Compare each engine of ENGINE_DIR with ONNX Runtime on ONNX_DIR's graph (Polygraphy)."""
    from .compare import compare_folders

    def report(r):
        click.echo(f"{r.graph:22s} {r.shape[0]}x{r.shape[1]}x{r.shape[2]:<5d} max abs "
                   f"{r.max_abs:.3e}  max rel {r.max_rel:.3e}  {'ok' if r.passed else 'FAIL'}")

    try:
        results = compare_folders(onnx_dir, engine_dir, height=height, width=width, batch=batch,
                                  atol=atol, rtol=rtol, report=report)
    except HirnError as exc:
        raise _fail(exc) from exc
    failed = [r.graph for r in results if not r.passed]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(results)} graphs beyond tolerance: "
                                   f"{', '.join(failed)}")
    click.echo(f"all {len(results)} graphs within tolerance")
