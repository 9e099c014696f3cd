"""``hirn-run``: upscale videos (not built yet)."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input", required=False)
@click.option("-o", "--output", help="output video or folder")
def main(input: str | None, output: str | None) -> None:
    """Upscale INPUT x4 into OUTPUT (not built yet)."""
    raise click.ClickException("hirn-run is not built yet: video upscaling is planned")
