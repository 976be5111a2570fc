"""inspect, diff and convert."""

from __future__ import annotations

import sys

import click

from . import cli
from .options import check_option, container_options, force_option, model_options, output_format_options


@cli.command()
@click.argument("path", required=False)
@container_options
@model_options
@click.option("--containers", "list_containers", is_flag=True, help="List every state dict in the file, with tensor counts.")
@click.option("--tree", is_flag=True,
              help="Show the module tree with element counts: parameters and buffer values apart where the source "
                   "says which is which (a live model, a pickled module).")
@click.option("--depth", type=click.IntRange(min=1), help="With --tree: how many levels to show.")
@click.option("--filter", "pattern", metavar="PATTERN", help="Only keys matching this glob (e.g. '*conv1*').")
@click.option("--regex", is_flag=True, help="Treat --filter as a regular expression (searched anywhere in the key).")
@click.option("--json", "as_json", is_flag=True, help="Machine output (schema ckptsurgeon.inspect/1).")
@click.option("--check", is_flag=True, help="Also verify the CRC-32 of every record of a torch zip (reads all tensor bytes).")
def inspect(path: str | None, container: str | None, trust: bool, model_spec: str | None, model_kwargs: str | None,
            model_path: str | None, list_containers: bool, tree: bool, depth: int | None, pattern: str | None,
            regex: bool, as_json: bool, check: bool) -> None:
    """Show the tensors of a checkpoint (PATH) or of a live model (--model): names, shapes, dtypes, counts.

    Reads no tensor data and runs no code from the file (unless --trust).
    """
    from ..inspect import inspect_checkpoint
    from ..model.inspect import inspect_model
    from ..model.build import load_model
    from ..views import render_containers, render_table, render_tree, write_inspection_json

    if (path is None) == (model_spec is None):
        raise click.UsageError("give either PATH or --model MODULE:CALLABLE")
    if path is not None:
        inspection = inspect_checkpoint(path, container=container, trust=trust, pattern=pattern, regex=regex)
    else:
        assert model_spec is not None   # the usage check above: PATH or --model, exactly one
        inspection = inspect_model(load_model(model_spec, model_kwargs, model_path), pattern=pattern, regex=regex,
                                   label=model_spec)
    checked = _verified(path, container, trust) if check and path is not None else None
    if as_json:
        write_inspection_json(inspection, sys.stdout)
    elif list_containers:
        click.echo(render_containers(inspection))
    elif tree:
        click.echo(render_tree(inspection, depth))
    else:
        click.echo(render_table(inspection))
    if checked is not None and not as_json:
        click.echo(f"check: CRC-32 of {checked} records verified" if checked else
                   "check: this format carries no checksums; only its structure was verified")


def _verified(path: str, container: str | None, trust: bool) -> int:
    from ..io import verify_checkpoint

    return verify_checkpoint(path, container=container, trust=trust)


@cli.command()
@click.argument("a")
@click.argument("b")
@container_options
@click.option("--values", is_flag=True, help="Also compare values of same-shaped tensors (reads tensor data).")
@click.option("--atol", type=float, default=0.0, show_default=True,
              help="With --values: differences up to this are equal (a number >= 0; bit-identical NaNs are equal).")
def diff(a: str, b: str, container: str | None, trust: bool, values: bool, atol: float) -> None:
    """Compare two checkpoints: keys only in A or B, shape and dtype changes, and values. Exits 1 on differences."""
    from ..diff import diff_checkpoints, render_diff

    result = diff_checkpoints(a, b, values=values, atol=atol, container=container, trust=trust)
    click.echo(render_diff(result))
    if result.has_differences:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("source")
@click.argument("out")
@container_options
@force_option
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16", "fp64"]),
              help="Cast floating tensors; integer buffers keep their dtype.")
@check_option
@output_format_options
def convert(source: str, out: str, container: str | None, trust: bool, force: bool, dtype: str | None,
            check: bool | None, output_format: str | None, max_shard_size: int | None) -> None:
    """Rewrite SOURCE's state dict as OUT (.safetensors, .pt, .pth), optionally in another dtype.

    OUT is a folder with --format safetensors-sharded (the hub's shards and index) or --format dcp.
    """
    from ..convert import convert_checkpoint
    from ..views import human_bytes

    result = convert_checkpoint(source, out, dtype=dtype, container=container, trust=trust, force=force, check=check,
                                format=output_format, max_shard_size=max_shard_size)
    where = f" from container '{result.source.container}'" if result.source.container else ""
    click.echo(f"wrote {result.output}: {result.tensors} tensors{where}, {result.cast} cast to {dtype or 'their own dtype'}, "
               f"{human_bytes(result.nbytes)}")


