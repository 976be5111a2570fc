"""The built-in example."""

from __future__ import annotations

import click

from . import cli


@cli.command()
@click.option("--keep", type=click.Path(file_okay=False), help="Write the demo files into this folder and keep them.")
def demo(keep: str | None) -> None:
    """Run the main job on a built-in example, offline, in seconds."""
    from ..demo import run_demo

    run_demo(keep, echo=click.echo)
