"""State-dict surgery without a model: rename, drop, extract, cast, strip (and the shared options)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

import click

from . import cli
from .options import container_options, force_option, output_format_options

if TYPE_CHECKING:
    from ..report import Report

F = Callable[..., Any]


def surgery_options(func: F) -> F:
    """--dry-run, --json, --report FILE, --verbose, --force, --container, --trust, --format, --max-shard-size,
    --quiet: every surgery command's."""
    func = output_format_options(func)
    func = container_options(func)
    func = force_option(func)
    func = click.option("--verbose", is_flag=True, help="List every key changed.")(func)
    func = click.option("--report", "report_path", metavar="FILE",
                        help="Also write the report as JSON (schema ckptsurgeon.report/2).")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")(func)
    func = click.option("--dry-run", is_flag=True, help="Plan and report only: read no tensor data, write nothing.")(func)
    return func


def finish(report: Report, *, as_json: bool, report_path: str | None, verbose: bool) -> None:
    """Print the report (text or JSON) and write it to ``report_path`` when asked."""
    from ..io.writer import write_text_atomic
    from ..surgery.render import render_surgery

    data = report.to_dict()
    if report_path:
        write_text_atomic(report_path, json.dumps(data, indent=2) + "\n")
    click.echo(json.dumps(data, indent=2) if as_json else render_surgery(report, verbose=verbose))


@cli.command()
@click.argument("source", metavar="IN")
@click.argument("out", metavar="OUT")
@click.option("--rule", "rules", multiple=True, metavar="REGEX=REPLACEMENT", help="re.sub on every key, in order; an empty result drops the key. Repeatable.")
@click.option("--prefix", "prefixes", multiple=True, metavar="OLD=NEW", help="A prefix table entry, '{}' for a layer index: 'layers.{}.attention.=blocks.{}.attn.'. Repeatable.")
@surgery_options
def rename(source: str, out: str, rules: tuple[str, ...], prefixes: tuple[str, ...], dry_run: bool, as_json: bool,
           report_path: str | None, verbose: bool, force: bool, container: str | None, trust: bool,
           output_format: str | None, max_shard_size: int | None) -> None:
    """Rename the keys of IN, written to OUT."""
    from ..surgery.edits import rename_checkpoint

    report = rename_checkpoint(source, out, rules, prefixes=prefixes, dry_run=dry_run, force=force,
                               container=container, trust=trust, format=output_format,
                               max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)


@cli.command()
@click.argument("source", metavar="IN")
@click.argument("out", metavar="OUT")
@click.option("--pattern", "patterns", multiple=True, required=True, metavar="PATTERN", help="Keys to leave out: a glob, or re:REGEX. Repeatable.")
@surgery_options
def drop(source: str, out: str, patterns: tuple[str, ...], dry_run: bool, as_json: bool, report_path: str | None,
         verbose: bool, force: bool, container: str | None, trust: bool,
         output_format: str | None, max_shard_size: int | None) -> None:
    """Write IN without the keys a pattern selects to OUT."""
    from ..surgery.edits import drop_keys

    report = drop_keys(source, out, patterns, dry_run=dry_run, force=force, container=container, trust=trust,
                       format=output_format, max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)


@cli.command()
@click.argument("source", metavar="IN")
@click.argument("out", metavar="OUT")
@click.option("--prefix", required=True, metavar="MODULE", help="The sub-tree to keep, e.g. backbone (or backbone.).")
@click.option("--strip", is_flag=True, help="Remove the prefix from the kept names.")
@surgery_options
def extract(source: str, out: str, prefix: str, strip: bool, dry_run: bool, as_json: bool, report_path: str | None,
            verbose: bool, force: bool, container: str | None, trust: bool,
            output_format: str | None, max_shard_size: int | None) -> None:
    """Keep only the keys under a module prefix of IN (e.g. a detector's backbone), written to OUT."""
    from ..surgery.edits import extract_prefix

    report = extract_prefix(source, out, prefix, strip=strip, dry_run=dry_run, force=force, container=container,
                            trust=trust, format=output_format,
                            max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)


@cli.command()
@click.argument("source", metavar="IN")
@click.argument("out", metavar="OUT")
@click.option("--dtype", required=True, type=click.Choice(["fp16", "bf16", "fp32", "fp64"]), help="The floating dtype to write.")
@surgery_options
def cast(source: str, out: str, dtype: str, dry_run: bool, as_json: bool, report_path: str | None, verbose: bool,
         force: bool, container: str | None, trust: bool,
         output_format: str | None, max_shard_size: int | None) -> None:
    """Cast the floating tensors of IN to --dtype (integer buffers keep theirs), written to OUT."""
    from ..surgery.edits import cast_checkpoint

    report = cast_checkpoint(source, out, dtype, dry_run=dry_run, force=force, container=container, trust=trust,
                             format=output_format, max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)


@cli.command()
@click.argument("source", metavar="IN")
@click.argument("out", metavar="OUT")
@click.option("--use-ema", is_flag=True, help="Keep the EMA's weights (the 'ema' container) as the weights.")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32", "fp64"]), help="Also cast the floating tensors.")
@surgery_options
def strip(source: str, out: str, use_ema: bool, dtype: str | None, dry_run: bool, as_json: bool,
          report_path: str | None, verbose: bool, force: bool, container: str | None, trust: bool,
          output_format: str | None, max_shard_size: int | None) -> None:
    """Weights only: the state dict of IN (or its EMA) without optimizer, epoch and the rest, written to OUT.

    The official YOLOv7 training .pt (a pickled fp16 model and EMA): strip IN OUT --use-ema --dtype fp32.
    """
    from ..surgery.edits import strip_checkpoint

    report = strip_checkpoint(source, out, use_ema=use_ema, dtype=dtype, dry_run=dry_run, force=force,
                              container=container, trust=trust, format=output_format,
                              max_shard_size=max_shard_size)
    finish(report, as_json=as_json, report_path=report_path, verbose=verbose)
