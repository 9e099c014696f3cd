"""``hirn-export``: ONNX graphs and TensorRT engines from a checkpoint (not built yet)."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export HiRN to per-step ONNX graphs and TensorRT engines."""


@main.command()
@click.argument("checkpoint")
@click.option("-o", "--output", required=True, help="output folder")
def onnx(checkpoint: str, output: str) -> None:
    """Write per-step ONNX graphs of CHECKPOINT (not built yet)."""
    raise click.ClickException("hirn-export onnx is not built yet")
