"""``hirn-train``: training with the published recipe (not built yet)."""

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", required=False)
def main(config: str | None) -> None:
    """Train HiRN from CONFIG.yml (not built yet)."""
    raise click.ClickException("hirn-train is not built yet: training is planned; "
                               "use published checkpoints with hirn-run meanwhile")
