"""``hirn-export``: per-step ONNX graphs from a checkpoint, and checks of exported folders."""

from __future__ import annotations

from pathlib import Path

import click

from hirn.train.errors import HirnError


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export HiRN to per-step ONNX graphs (and, later, TensorRT engines)."""


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
def onnx(checkpoint: Path, output: Path, dcn: str, precision: str, opset: int,
         param_key: str | None, overwrite: bool) -> None:
    """Write the per-step graphs of CHECKPOINT into a new folder."""
    from hirn.train import load_model

    from .onnx_export import ExportOptions, export_onnx

    try:
        options = ExportOptions(dcn=dcn, precision=precision, opset=opset, overwrite=overwrite)
        if output.exists() and not overwrite:
            raise click.ClickException(f"{output} already exists; pass --overwrite to replace it")
        model = load_model(checkpoint, param_key=param_key)
        manifest = export_onnx(checkpoint, output, options, model=model,
                               progress=lambda name: click.echo(f"  exporting {name}", err=True))
    except (HirnError, ValueError) as exc:
        raise _fail(exc) from exc
    click.echo(f"wrote {len(manifest['graphs'])} graphs ({precision}, dcn={dcn}, "
               f"opset {opset}) to {output}")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
def check(folder: Path) -> None:
    """Verify FOLDER against its manifest (files present, sizes and SHA-256 equal)."""
    from .manifest import verify_folder

    try:
        manifest = verify_folder(folder)
    except HirnError as exc:
        raise _fail(exc) from exc
    click.echo(f"{folder}: {len(manifest['graphs'])} graphs intact "
               f"({manifest['precision']}, dcn={manifest['dcn']}, opset {manifest['opset']}, "
               f"exported by hirn {manifest['tools'].get('hirn', '?')})")
