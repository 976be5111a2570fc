"""probe: the shapes and dtypes a module takes and returns, its children's outputs, and two modules compared."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click

from . import cli
from .options import model_options

if TYPE_CHECKING:
    from torch import nn

    from ..model.nested import Difference, Node, Where
    from ..model.probe import Probe

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16", "bf16": "bfloat16",
          "bfloat16": "bfloat16", "fp64": "float64", "float64": "float64", "int64": "int64", "int32": "int32",
          "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}
MARK = "!"


def _parse_shapes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[int, ...]]:
    shapes = []
    for text in values:
        parts = [part.strip() for part in text.split(",")]
        if not all(part.isdigit() for part in parts):
            raise click.BadParameter(f"{text!r} is not a shape: give sizes >= 0 separated by commas, e.g. 6,20000,4")
        shapes.append(tuple(int(part) for part in parts))
    return shapes


@cli.command()
@model_options
@click.option("--module", default="", metavar="NAME", help="The submodule to probe (dotted name); the whole model if omitted.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="D0,D1,...", callback=_parse_shapes,
              help="A random input of this shape; repeat for a model taking several positional inputs.")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(list(DTYPES)),
              help="The inputs' dtype: one for all, or one per --input-shape (default fp32; integer inputs are 0).")
@click.option("--into-module", is_flag=True, help="Feed the inputs to --module itself instead of running the whole model.")
@click.option("--device", type=click.Choice(["meta", "cpu"]), default="meta", show_default=True,
              help="meta allocates no tensor memory; a forward that cannot run there is rerun on cpu (said in a note).")
@click.option("--compare", "compare_spec", metavar="MODULE:CALLABLE",
              help="The reference model: differences read 'got X, expected <the reference's>'. Exits 1 on differences.")
@click.option("--compare-kwargs", metavar="JSON", help="Keyword arguments for --compare, as a JSON object.")
@click.option("--compare-module", metavar="NAME", help="The reference's submodule to probe (default: --module).")
@click.option("--json", "as_json", is_flag=True, help="Machine output.")
def probe(model_spec: str | None, model_kwargs: str | None, model_path: str | None, module: str,
          input_shapes: list[tuple[int, ...]], dtypes: tuple[str, ...], into_module: bool, device: str,
          compare_spec: str | None, compare_kwargs: str | None, compare_module: str | None, as_json: bool) -> None:
    """Show what a module takes and returns (shapes and dtypes, nested tuples, lists and dicts by path) and
    the output of each of its direct children in call order; with --compare, the same for a reference
    model side by side, each difference marked and worded. Changes nothing.

    \b
    Example:
      ckptsurgeon probe --model mynets.det:build --module backbone --input-shape 6,20000,4 \\
          --compare mynets.det:build_old
    """
    from ..model.probe import compare_probes

    if model_spec is None:
        raise click.UsageError("give the model with --model MODULE:CALLABLE")
    if not input_shapes:
        raise click.UsageError("give the input with --input-shape, e.g. --input-shape 6,20000,4 (repeatable)")
    run = _runner(model_path, input_shapes, dtypes, into_module, device)
    new = run(model_spec, model_kwargs, module)
    old = run(compare_spec, compare_kwargs, module if compare_module is None else compare_module) if compare_spec else None
    differences = compare_probes(old, new) if old is not None else []
    if as_json:
        data: dict[str, Any] = {"schema": "ckptsurgeon.probe/1", "model": model_spec, **new.as_dict()}
        if old is not None:
            data["compare"] = {"model": compare_spec, **old.as_dict()}
            data["differences"] = [difference.as_dict() for difference in differences]
        click.echo(json.dumps(data, indent=2))
    elif old is None:
        click.echo("\n".join(render_probe(new, f"--model {model_spec}")))
    else:
        click.echo("\n".join(render_comparison(old, new, f"--compare {compare_spec}", f"--model {model_spec}",
                                               differences)))
    for label, result in (("--model", new), ("--compare", old)):
        for note in result.notes if result is not None else ():
            click.echo(f"note: {label}: {note}" if old is not None else f"note: {note}", err=True)
    if differences:
        raise click.exceptions.Exit(1)


def _runner(model_path: str | None, input_shapes: list[tuple[int, ...]], dtypes: tuple[str, ...], into_module: bool,
            device: str) -> Callable[[str, str | None, str], Probe]:
    import torch

    from ..model.probe import probe as run_probe

    if len(dtypes) > 1 and len(dtypes) != len(input_shapes):
        raise click.UsageError(f"{len(dtypes)} --dtype for {len(input_shapes)} --input-shape: give one --dtype for "
                               f"all inputs, or one per --input-shape")
    torch_dtypes = [getattr(torch, DTYPES[name]) for name in dtypes] or [torch.float32]

    def run(spec: str, kwargs_json: str | None, module: str) -> Probe:
        with contextlib.redirect_stdout(sys.stderr):   # what the model prints must not mix with --json
            return run_probe(_builder(spec, kwargs_json, model_path), module, input_shapes=input_shapes,
                             dtype=torch_dtypes, into_module=into_module, device=device)
    return run


def _builder(spec: str, kwargs_json: str | None, model_path: str | None) -> Callable[[], nn.Module]:
    """Builds the model when called (probe calls it under the meta device first). Its module is imported
    now, outside the meta device, so that tensors it makes at import time are real ones."""
    from ..model.build import load_model, parse_model_kwargs

    parse_model_kwargs(kwargs_json)   # bad JSON is reported before anything is built
    if model_path and model_path not in sys.path:
        sys.path.insert(0, model_path)
    try:
        importlib.import_module(spec.partition(":")[0])
    except (Exception, SystemExit):   # load_model imports it again and reports the failure properly
        pass

    def build() -> nn.Module:
        model: nn.Module = load_model(spec, kwargs_json, model_path)
        return model
    return build


def render_probe(result: Probe, label: str) -> list[str]:
    """The terminal view of one probe: inputs, output, and the children's outputs in call order."""
    lines = [f"{label}: {_subject(result)}, run on {result.device}", ""]
    lines += _columns([(path, node.text()) for path, node in result.rows()])
    lines += ["", f"stages: the direct children of {_subject(result)}, in call order"]
    rows = [(path, stage.type_name if index == 0 else "", node.text())
            for stage in result.stages
            for index, (path, node) in enumerate(_flat(stage.output, stage.label))]
    lines += _columns(rows)
    if result.not_called:
        lines.append("  not called: " + ", ".join(result.not_called))
    return lines


def render_comparison(old: Probe, new: Probe, old_label: str, new_label: str,
                      differences: Sequence[Difference]) -> list[str]:
    """Both interfaces side by side, ``!`` on each row that differs, then one line per difference."""
    from ..model.nested import Where
    from ..model.probe import pair_stages

    lines = [f"old: {old_label}: {_subject(old)}, run on {old.device}",
             f"new: {new_label}: {_subject(new)}, run on {new.device}", ""]
    rows = [("", "path", "old", "new")]
    for section, root, old_node, new_node in (("input", "input", old.args, new.args),
                                              ("input", "input", old.kwargs, new.kwargs),
                                              ("output", "output", old.output, new.output)):
        if old_node.items or new_node.items or section == "output":
            rows += _marked(section, _side_by_side(old_node, new_node, Where(root)), differences)
    rows.append(("", "", "", ""))
    rows.append(("", "stages", "", ""))
    for pair in pair_stages(old, new):
        where = Where(pair.label)
        pair_rows = _side_by_side(pair.old.output if pair.old else None, pair.new.output if pair.new else None, where)
        rows += _marked("stage", pair_rows, differences)
    lines += _columns(rows)
    if not differences:
        return lines + ["", "no differences: the interfaces agree"]
    count = len(differences)
    return lines + ["", f"{count} difference{'s' * (count != 1)} (got, expected the old's):"] + \
        [f"  {difference}" for difference in differences]


def _side_by_side(old: Node | None, new: Node | None, where: Where) -> list[tuple[str, str, str]]:
    from ..model.nested import walk

    old_index = {place.path: node for place, node in walk(old, where)} if old is not None else {}
    new_index = {place.path: node for place, node in walk(new, where)} if new is not None else {}
    old_rows = [path for path, _ in _flat(old, where.root)] if old is not None else []
    new_rows = [path for path, _ in _flat(new, where.root)] if new is not None else []
    order: list[str] = []
    pending = [path for path in new_rows if path not in old_index]
    for path in old_rows:   # the old's order, each new-only row placed before the next row both have
        if path in new_index and pending:
            position = new_rows.index(path) if path in new_rows else len(new_rows)
            order += [p for p in pending if new_rows.index(p) < position]
            pending = [p for p in pending if new_rows.index(p) >= position]
        order.append(path)
    order += pending

    def text(index: dict[str, Node], path: str) -> str:
        return index[path].text() if path in index else "-"
    return [(path, text(old_index, path), text(new_index, path)) for path in order]


def _marked(section: str, rows: list[tuple[str, str, str]],
            differences: Sequence[Difference]) -> list[tuple[str, str, str, str]]:
    def differs(path: str) -> bool:
        return any(d.section == section and (path == d.path or (path.startswith(d.path) and path[len(d.path)] in "[."))
                   for d in differences)
    return [(MARK if differs(path) else "", path, old, new) for path, old, new in rows]


def _flat(node: Node, root: str) -> list[tuple[str, Node]]:
    from ..model.nested import Where, flatten

    return flatten(node, Where(root))


def _subject(result: Probe) -> str:
    name = f"module {result.module!r}" if result.module else "the whole model"
    fed = ", inputs fed to it directly" if result.into_module else ""
    return f"{name} ({result.type_name}){fed}"


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths))).rstrip() for row in rows]
