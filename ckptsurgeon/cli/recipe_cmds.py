"""recipe check: validate a recipe and show what each of its patterns selects."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any

import click

from . import cli
from .options import model_options

if TYPE_CHECKING:
    from ..recipe_check import Names, PatternUse, RecipeCheck

SHOWN = 4   # names listed per pattern (the count says how many there are)


@cli.group()
def recipe() -> None:
    """Recipes: a whole migration in one TOML file (see recipes/README.md)."""


@recipe.command()
@click.argument("recipe_path", metavar="RECIPE")
@model_options
@click.option("--target", "template", metavar="TEMPLATE", help="Check the patterns against this checkpoint's keys.")
@click.option("--source", metavar="CKPT", help="Also check the source-side patterns (rename, copy, allow_unused).")
@click.option("--json", "as_json", is_flag=True, help="Machine output.")
def check(recipe_path: str, model_spec: str | None, model_kwargs: str | None, model_path: str | None,
          template: str | None, source: str | None, as_json: bool) -> None:
    """Validate RECIPE and show what each of its patterns selects in a model (--model) or checkpoint (--target).

    A pattern that selects nothing is a warning (exit 0); an invalid recipe is an error (exit 2).
    """
    from ..recipe import load_recipe
    from ..recipe_check import check_recipe

    if model_spec and template:
        raise click.UsageError("give --model or --target, not both")
    loaded = load_recipe(recipe_path)
    result = check_recipe(loaded, _target_names(model_spec, model_kwargs, model_path, template),
                          _source_names(source, loaded.transfer.container) if source else None)
    if as_json:
        click.echo(json.dumps(_check_json(result), indent=2))
    else:
        click.echo("\n".join(_check_lines(result)))
    for warning in result.warnings():
        click.echo(f"warning: {warning}", err=True)


def _target_names(model_spec: str | None, model_kwargs: str | None, model_path: str | None,
                  template: str | None) -> Names | None:
    from ..recipe_check import key_names, model_names

    if model_spec:
        from ..model.build import load_model

        return model_names(load_model(model_spec, model_kwargs, model_path), f"--model {model_spec}")
    if template:
        from ..io import read_specs

        return key_names(read_specs(template)[0], template)
    return None


def _source_names(path: str, container: str | None) -> Names:
    from ..io import read_specs
    from ..recipe_check import key_names

    return key_names(read_specs(path, container=container)[0], path)


def _check_lines(result: RecipeCheck) -> list[str]:
    loaded = result.recipe
    lines = [f"{loaded.path}: valid recipe (schema 1, sha256 {loaded.sha256[:12]})"]
    if loaded.description:
        lines += textwrap.wrap(" ".join(loaded.description.split()), 100, initial_indent="  ",
                               subsequent_indent="  ")
    if result.target is None:
        lines.append("patterns (give --model or --target to see what they select):")
    else:
        lines.append(f"patterns, against {result.target.label}"
                     + (f" and source {result.source.label}" if result.source else "") + ":")
    width = max((len(use.table) for use in result.uses), default=0)
    lines += [_use_line(use, width) for use in result.uses]
    return lines


def _use_line(use: PatternUse, width: int) -> str:
    head = f"  {use.table.ljust(width)}  '{use.pattern}'"
    if use.selected is None:
        return f"{head}: {use.applies_to}, not checked"
    shown = ", ".join(use.selected[:SHOWN]) + (", ..." if len(use.selected) > SHOWN else "")
    return f"{head}: {len(use.selected)} {use.applies_to}" + (f" ({shown})" if shown else "")


def _check_json(result: RecipeCheck) -> dict[str, Any]:
    return {"recipe": {"path": result.recipe.path, "sha256": result.recipe.sha256},
            "target": result.target.label if result.target else None,
            "source": result.source.label if result.source else None,
            "patterns": [{"table": use.table, "pattern": use.pattern, "applies_to": use.applies_to,
                          "selected": list(use.selected) if use.selected is not None else None}
                         for use in result.uses],
            "warnings": result.warnings()}
