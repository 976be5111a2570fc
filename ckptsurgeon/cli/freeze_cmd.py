"""freeze: what a recipe freezes at an epoch, how BatchNorm behaves, and the optimizer groups it builds."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Sequence

import click

from . import cli
from ..options import BATCHNORM_POLICIES, FREEZE_MODES
from .options import container_options, model_options

if TYPE_CHECKING:
    from ..model.describe import FreezeState
    from ..options import FreezeOptions
    from ..recipe import Recipe
    from ..report import Report


@cli.command()
@model_options
@click.option("--target", "template", metavar="TEMPLATE", help="A checkpoint whose keys describe the model (no live model).")
@click.option("--recipe", metavar="FILE", help="A recipe (TOML): its [freeze], [[unfreeze]] and [optimizer] tables.")
@click.option("--epoch", type=click.IntRange(min=0), default=0, show_default=True,
              help="Show the state at the start of this epoch (the unfreeze stages due by then applied).")
@click.option("--freeze", "patterns", multiple=True, metavar="PATTERN", help="Freeze these too (before the recipe's). Repeatable.")
@click.option("--batchnorm", type=click.Choice(BATCHNORM_POLICIES), help="BatchNorm policy, replacing the recipe's.")
@click.option("--mode", type=click.Choice(FREEZE_MODES), help="requires_grad, or lr_zero for DDP; replaces the recipe's.")
@click.option("--source", metavar="CKPT", help="The pretrained checkpoint: planned (no tensor data read) for "
              "a recipe that freezes what the transfer loads ([freeze] transferred = true).")
@click.option("--depth", type=click.IntRange(min=1), default=1, show_default=True, help="Module levels per row.")
@click.option("--json", "as_json", is_flag=True, help="Machine output.")
@container_options
def freeze(model_spec: str | None, model_kwargs: str | None, model_path: str | None, template: str | None,
           recipe: str | None, epoch: int, patterns: tuple[str, ...], batchnorm: str | None, mode: str | None,
           source: str | None, depth: int, as_json: bool, container: str | None, trust: bool) -> None:
    """Show what is trainable and frozen per module, the BatchNorm modes, and the optimizer groups a fine-tuning
    would build at --epoch, for a live model (--model) or a checkpoint's keys (--target).

    Changes nothing: training scripts apply the same recipe with ckptsurgeon.FineTune.
    """
    from ..recipe import load_recipe

    if (template is None) == (model_spec is None):
        raise click.UsageError("give the model as either --model MODULE:CALLABLE or --target TEMPLATE")
    loaded = load_recipe(recipe) if recipe else None
    options = _options(loaded, patterns, batchnorm, mode)
    if options.freeze_transferred and source is None:
        raise click.UsageError("this recipe freezes what the transfer loads ([freeze] transferred = true): give the "
                               "pretrained checkpoint with --source CKPT")
    if template is not None:
        from ..io import read_specs
        from ..model.describe import describe_keys

        specs = read_specs(template)[0]
        report = _transfer_report(source, loaded, container, trust, template=template) if source else None
        state = describe_keys(((name, spec.shape) for name, spec in specs.items()), options, epoch=epoch,
                              depth=depth, report=report)
        label = template
    else:
        assert model_spec is not None   # the usage check above
        state, label = _live_state(model_spec, model_kwargs, model_path, options, epoch, depth,
                                   source, loaded, container, trust)
    if as_json:
        data = {"model": label, "epoch": epoch, "options": dataclasses.asdict(options),
                "recipe": {"path": loaded.path, "sha256": loaded.sha256} if loaded else None, **state.as_dict()}
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo("\n".join(render_state(state, label, epoch, options)))
    for selection in state.selections:
        if not selection.names:
            click.echo(f"warning: {selection.kind} {selection.rule!r} selects no parameters of {label}", err=True)
    for note in state.notes:
        click.echo(f"note: {note}", err=True)


def _options(loaded: Recipe | None, patterns: tuple[str, ...], batchnorm: str | None,
             mode: str | None) -> FreezeOptions:
    from ..options import FreezeOptions

    base = loaded.freeze if loaded else FreezeOptions()
    return dataclasses.replace(base, freeze=patterns + base.freeze, batchnorm=batchnorm or base.batchnorm,
                               mode=mode or base.mode)


def _live_state(model_spec: str, model_kwargs: str | None, model_path: str | None, options: FreezeOptions,
                epoch: int, depth: int, source: str | None, loaded: Recipe | None, container: str | None,
                trust: bool) -> tuple[FreezeState, str]:
    from ..model.build import load_model
    from ..model.describe import describe_model
    from ..model.schedule import FineTune

    model = load_model(model_spec, model_kwargs, model_path)
    report = _transfer_report(source, loaded, container, trust, model=model) if source else None
    finetune = FineTune(model, options, report=report)
    finetune.start()
    finetune.on_epoch_start(epoch, None)
    return describe_model(model, finetune=finetune, depth=depth), f"--model {model_spec}"


def _transfer_report(source: str, loaded: Recipe | None, container: str | None, trust: bool, *,
                     model: Any = None, template: str | None = None) -> Report:
    """The transfer's plan (a dry run: no tensor data read), for freezing what it loads."""
    from ..options import TransferOptions, layered
    from ..pipeline import model_target, run_transfer, template_target

    options = layered(loaded.transfer if loaded else TransferOptions(), container=container, trust=trust)
    target = model_target(model) if model is not None else template_target(template or "")
    return run_transfer(source, target, options, dry_run=True)


def render_state(state: FreezeState, label: str, epoch: int, options: FreezeOptions) -> list[str]:
    trainable = sum(row.trainable for row in state.modules)
    frozen = sum(row.frozen for row in state.modules)
    lines = [f"{label} at epoch {epoch}: {trainable} parameter tensors trainable, {frozen} frozen "
             f"(mode {options.mode}, BatchNorm policy {options.batchnorm})", "", "module  trainable  frozen"]
    rows = [(row.module, f"{row.trainable} ({_count(row.trainable_numel)})", f"{row.frozen} ({_count(row.frozen_numel)})")
            for row in state.modules]
    lines += _columns(rows)
    if state.batchnorm:
        modes: dict[str, int] = {}
        for layer in state.batchnorm:
            modes[layer.mode] = modes.get(layer.mode, 0) + 1
        lines += ["", "BatchNorm: " + ", ".join(f"{n} {mode}" for mode, n in modes.items())]
    lines += ["", "optimizer groups  params  lr  weight_decay"]
    lines += _columns([(group.name, f"{group.count} ({_count(group.numel)})",
                        "-" if group.lr is None else f"{group.lr:g}",
                        "-" if group.weight_decay is None else f"{group.weight_decay:g}")
                       for group in state.groups])
    return lines


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _count(numel: int) -> str:
    from ..views import human_count

    return human_count(numel)
