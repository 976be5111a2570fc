"""verify: did the migration keep the pretrained function, and where does it change?"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from . import cli

if TYPE_CHECKING:
    from ..model.verify import Difference, Verification

SHOWN = 20   # rows of each table without --verbose


@cli.command()
@click.option("--original", "original_spec", required=True, metavar="MODULE:CALLABLE", help="The pretrained architecture.")
@click.option("--original-weights", required=True, metavar="FILE", help="Its weights (the transfer's SOURCE).")
@click.option("--original-kwargs", metavar="JSON", help="Keyword arguments for --original.")
@click.option("--model", "model_spec", required=True, metavar="MODULE:CALLABLE", help="The modified architecture.")
@click.option("--weights", required=True, metavar="FILE", help="Its transferred weights (the transfer's OUT).")
@click.option("--model-kwargs", metavar="JSON", help="Keyword arguments for --model.")
@click.option("--model-path", metavar="DIR", help="Folder to import both callables from (added to sys.path).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="N,C,H,W",
              help="A random input of this shape (seeded); repeat for several positional inputs.")
@click.option("--inputs", metavar="FILE", help="Inputs from a tensor file (.safetensors/.pt), in file order.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Relative error (max |delta| / max |reference|) above which outputs differ.")
@click.option("--report", "report_path", metavar="FILE", help="Pair modules by this transfer report (JSON) "
              "instead of planning from the two state dicts.")
@click.option("--json", "as_json", is_flag=True, help="Machine output.")
@click.option("--verbose", is_flag=True, help="List every module compared.")
def verify(original_spec: str, original_weights: str, original_kwargs: str | None, model_spec: str, weights: str,
           model_kwargs: str | None, model_path: str | None, input_shapes: tuple[str, ...], inputs: str | None,
           seed: int, tolerance: float, report_path: str | None, as_json: bool, verbose: bool) -> None:
    """Run the original (with its weights) and the modified model (with the transferred weights) on the same
    inputs and report, module by module in execution order, where their outputs start to differ.

    Exit 0 when the final outputs agree within --tolerance, 3 when they differ.
    """
    from ..model.build import load_model, load_weights
    from ..model.inputs import load_inputs, parse_shape
    from ..model.verify import verify as run_verify
    from ..report import read_report_plan

    if (inputs is None) == (not input_shapes):
        raise click.UsageError("give the inputs as --input-shape N,C,H,W (repeatable) or --inputs FILE")
    shapes = [parse_shape(text) for text in input_shapes]
    original = load_weights(load_model(original_spec, original_kwargs, model_path), original_weights, "--original-weights")
    modified = load_weights(load_model(model_spec, model_kwargs, model_path), weights, "--weights")
    plan = read_report_plan(report_path) if report_path else None
    result = run_verify(original, modified, plan=plan, inputs=load_inputs(inputs) if inputs else None,
                        input_shapes=shapes, seed=seed, tolerance=tolerance)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo("\n".join(render_verification(result, verbose=verbose)))
    if not result.ok:
        raise click.exceptions.Exit(3)


def render_verification(result: Verification, *, verbose: bool = False) -> list[str]:
    worst = max(result.outputs, key=lambda d: d.rel_error, default=None)
    if result.ok:
        lines = [f"verify: the final outputs agree within {result.tolerance:g}"
                 + (f" (largest relative error {worst.rel_error:.3g} at {worst.name})" if worst else "")]
    else:
        assert worst is not None   # a failure is an output beyond the tolerance
        lines = [f"verify: the final outputs differ beyond {result.tolerance:g} (worst {worst.name}: max |delta| "
                 f"{worst.max_abs:.3g}, relative {worst.rel_error:.3g})"]
    first = result.first_divergence
    if first is not None:
        lines += story(first)
    beyond = sum(d.exceeds for d in result.modules)
    lines.append(f"modules compared: {len(result.modules)} calls, {beyond} beyond the tolerance"
                 + (f"; inserted (compared with their input): {', '.join(result.inserted)}" if result.inserted else ""))
    lines += [f"note: {note}" for note in result.notes]
    rows = list(result.modules) if verbose else [d for d in result.modules if d.exceeds]
    if rows:
        lines += ["", "module  original  max |delta|  relative  note" if verbose else
                  "beyond the tolerance, in execution order:"]
        lines += _table(rows[:None if verbose else SHOWN])
        if not verbose and len(rows) > SHOWN:
            lines.append(f"  ... {len(rows) - SHOWN} more (--verbose lists every module)")
    lines += ["", "final outputs:"] + _table(list(result.outputs))
    return lines


def story(first: Difference) -> list[str]:
    """Where the function changed, in words: what the first module beyond the tolerance did."""
    if first.inserted:
        what = first.note.removeprefix("inserted: ").replace("compared with its input; ", "")
        lines = [f"the function first changes at {first.name}, an inserted module (no partner in the original): "
                 f"{what} (relative change {first.rel_error:.3g}); every module after it sees features the "
                 f"pretrained weights were not trained on"]
        if "multiplies its input by 0.500" in first.note:
            lines.append("  a sigmoid gate whose last layer starts at zero opens at sigmoid(0) = 0.5")
        return lines
    detail = f" ({first.note})" if first.note else ""
    return [f"the function first changes at {first.name} (from {first.partner} in the original): relative error "
            f"{first.rel_error:.3g}{detail}; its weights or its inputs differ from the pretrained model's"]


def _table(rows: list[Difference]) -> list[str]:
    cells = [(d.name + (f" (call {d.call + 1})" if d.call else ""), d.partner or "(inserted)",
              f"{d.max_abs:.3g}", f"{d.rel_error:.3g}", d.note) for d in rows]
    if not cells:
        return ["  (none)"]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]
    return [("  " + "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + f"  {row[4]}").rstrip()
            for row in cells]
