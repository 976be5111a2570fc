"""transfer: the main job."""

from __future__ import annotations

import sys

import click

from . import cli
from ..options import STRATEGY_SWITCHES
from .options import check_option, container_options, force_option, model_options, output_format_options


@cli.command()
@click.argument("source")
@click.option("--target", "template", metavar="TEMPLATE", help="A checkpoint whose keys, shapes and dtypes describe the target.")
@model_options
@click.option("-o", "--out", "out", metavar="OUT", help="Write the target's complete state dict here (.safetensors, .pt; a folder with --format).")
@click.option("--report", "report_json", metavar="FILE", help="Write the report as JSON (schema ckptsurgeon.report/1).")
@click.option("--markdown", "report_md", metavar="FILE", help="Write the report as Markdown.")
@click.option("--dry-run", is_flag=True, help="Print the plan only; read no tensor data, write no OUT.")
@click.option("--rename", multiple=True, metavar="REGEX=REPLACEMENT", help="Rename source keys (re.sub; empty result drops). Repeatable.")
@click.option("--resize", multiple=True, metavar="PATTERN=METHOD", help="Resize target keys matching PATTERN: slice_pad, in_channels, pos_embed, yolo_head, kernel. Repeatable.")
@click.option("--init", "init_rules", multiple=True, metavar="PATTERN=NAME[:ARG]", help="Initialise new target keys: zeros, ones, constant:V, normal:STD, kaiming, xavier, dirac. Repeatable.")
@click.option("--copy", "copy_rules", multiple=True, metavar="SRC_PREFIX=DST_PREFIX", help="Feed a source sub-tree into a target sub-tree; one source may feed several (two-stream models). Repeatable.")
@click.option("--order-fallback", is_flag=True, help="Pair leftover modules by registration order (signatures must agree).")
@click.option("--disable", multiple=True, type=click.Choice(STRATEGY_SWITCHES), help="Switch a matching pass off. Repeatable.")
@click.option("--recipe", metavar="FILE", help="A recipe (TOML, see recipes/README.md); rules given here are tried first, single values here replace its.")
@click.option("--seed", type=int, help="Seed for --init (default 0).")
@click.option("--strict", is_flag=True, help="Exit 3 if any source tensor is unused or any target tensor is new.")
@click.option("--allow-unused", multiple=True, metavar="PATTERN", help="With --strict: source keys allowed to stay unused.")
@click.option("--allow-new", multiple=True, metavar="PATTERN", help="With --strict: target keys allowed to be new.")
@click.option("--min-coverage", type=click.FloatRange(0, 1), metavar="F", help="Exit 3 if loaded+resized target tensors fall below F.")
@click.option("--verbose", is_flag=True, help="List every renamed, resized and new key.")
@container_options
@force_option
@check_option
@output_format_options
def transfer(source: str, template: str | None, model_spec: str | None, model_kwargs: str | None,
             model_path: str | None, out: str | None, report_json: str | None, report_md: str | None, dry_run: bool,
             rename: tuple[str, ...], resize: tuple[str, ...], init_rules: tuple[str, ...],
             copy_rules: tuple[str, ...], order_fallback: bool, disable: tuple[str, ...], recipe: str | None,
             seed: int | None, strict: bool, allow_unused: tuple[str, ...], allow_new: tuple[str, ...],
             min_coverage: float | None, verbose: bool, container: str | None, trust: bool, force: bool,
             check: bool | None, output_format: str | None, max_shard_size: int | None) -> None:
    """Transfer SOURCE's weights into a modified architecture and account for every key.

    The target is a live model (--model) or a template checkpoint (--target). Names are matched by rules,
    exact names, prefix moves and structural alignment (modules inserted or removed); what fits is loaded,
    what a --resize rule covers is resized, the rest keeps the target's values or an --init.
    """
    from ..io.records import CHECK_CRC, checking
    from ..job import TransferJob
    from ..options import TransferOptions, layered
    from ..recipe import load_recipe

    if (template is None) == (model_spec is None):
        _fail_usage("give the target as either --target TEMPLATE or --model MODULE:CALLABLE")
    if out is None and not dry_run:
        _fail_usage("give -o OUT, or --dry-run to only see the plan")
    loaded = load_recipe(recipe) if recipe else None
    options = layered(loaded.transfer if loaded else TransferOptions(), rename=rename, resize=resize,
                      init=init_rules, copy=copy_rules, disable=disable, order_fallback=order_fallback, seed=seed,
                      container=container, trust=trust, strict=strict, allow_unused=allow_unused,
                      allow_new=allow_new, min_coverage=min_coverage)
    job = TransferJob(source, options, template=template, model_spec=model_spec, model_kwargs=model_kwargs,
                      model_path=model_path, out=out, force=force, recipe=loaded.origin if loaded else None,
                      format=output_format, max_shard_size=max_shard_size)
    with checking(CHECK_CRC.get() if check is None else check):
        report = job.run(dry_run=dry_run, report_json=report_json, report_md=report_md)
    click.echo(report.render(color=sys.stdout.isatty(), verbose=verbose))
    if report.gate_failures:
        click.echo(f"error: gate failed, {out or 'OUT'} not written: {'; '.join(report.gate_failures)}", err=True)
        raise click.exceptions.Exit(3)


def _fail_usage(message: str) -> None:
    # One line and exit 2, like every other bad input (the group prints SurgeonErrors the same way).
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(2)
