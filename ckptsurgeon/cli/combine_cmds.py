"""Surgery over several checkpoints: merge (the union of two) and average (the mean of N)."""

from __future__ import annotations

import click

from . import cli
from .surgery_cmds import finish, surgery_options


@cli.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.argument("out", metavar="OUT")
@click.option("--prefer", type=click.Choice(["a", "b"]),
              help="Take this side's tensor for keys both hold with another shape, dtype or value (still reported).")
@surgery_options
def merge(a: str, b: str, out: str, prefer: str | None, dry_run: bool, as_json: bool, report_path: str | None,
          verbose: bool, force: bool, container: str | None, trust: bool,
          output_format: str | None, max_shard_size: int | None) -> None:
    """The union of two state dicts, A's keys then B's new ones, written to OUT.

    A key in both with another shape, dtype or value is a conflict: listed, exit 2, nothing written, unless
    --prefer picks a side. Values are compared when run, one pair of tensors at a time; --dry-run reads no
    tensor data and finds shape and dtype conflicts only.

    Example: ckptsurgeon merge backbone.safetensors head.safetensors detector.safetensors
    """
    from ..surgery.combine import merge_checkpoints

    report = merge_checkpoints(a, b, out, prefer=prefer, dry_run=dry_run, force=force, container=container,
                               trust=trust, format=output_format,
                               max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)


@cli.command()
@click.argument("inputs", metavar="IN...", nargs=-1, required=True)
@click.option("-o", "--output", "out", metavar="OUT", help="The averaged checkpoint (.safetensors or .pt); "
              "required unless --dry-run.")
@click.option("--weights", metavar="W1,W2,...", help="One weight per input, normalised to sum to 1 "
              "(default: equal).")
@surgery_options
def average(inputs: tuple[str, ...], out: str | None, weights: str | None, dry_run: bool, as_json: bool,
            report_path: str | None, verbose: bool, force: bool, container: str | None, trust: bool,
            output_format: str | None, max_shard_size: int | None) -> None:
    """The mean of checkpoints of one architecture (EMA, SWA, model soups), written to OUT.

    Floating tensors are accumulated in fp32, one source tensor at a time, and written in their own dtype;
    integer buffers (num_batches_tracked) come from the first input. Re-estimate BatchNorm statistics after.

    Example: ckptsurgeon average epoch8.pt epoch9.pt epoch10.pt -o swa.safetensors --weights 1,1,2
    """
    from ..surgery.combine import average_checkpoints, parse_weights

    if out is None and not dry_run:
        raise click.UsageError("give the output with -o OUT (or --dry-run to plan only)")
    report = average_checkpoints(inputs, out, weights=parse_weights(weights) if weights else None,
                                 dry_run=dry_run, force=force, container=container, trust=trust,
                                 format=output_format, max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)
