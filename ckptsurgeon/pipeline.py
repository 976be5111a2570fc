"""The one transfer flow, for the library call and the CLI alike: read -> plan -> gate -> apply -> report.

The target is a live model (loaded in place, then optionally written out) or a template checkpoint (its
keys, shapes and dtypes describe the target; the result is streamed file to file).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .errors import MappingError
from .io import Checkpoint, CheckpointInfo, open_checkpoint
from .match.planner import plan_with_options
from .match.rules import compile_pattern
from .options import Gates, RecipeOrigin, TransferOptions
from .plan import INIT, Plan, is_bookkeeping
from .specs import TensorSpec, specs_of

if TYPE_CHECKING:
    import torch

    from .report import Report


@dataclass(frozen=True)
class TransferTarget:
    """What a transfer writes into: a live model or a template checkpoint, and what matching needs of it."""

    label: str                               # "--model pkg:build", a template path, or a class name
    specs: Mapping[str, TensorSpec]
    tied: tuple[tuple[str, ...], ...] = ()   # target keys sharing one tensor
    parameters: frozenset[str] | None = None   # keys that are parameters; None: the target does not say
    model: torch.nn.Module | None = None
    template: Checkpoint | None = None


def model_target(model: torch.nn.Module, label: str | None = None) -> TransferTarget:
    from .model.tied import tied_groups

    parameters = frozenset(name for name, _ in model.named_parameters(remove_duplicate=False))
    return TransferTarget(label or type(model).__name__, specs_of(model.state_dict()),
                          tuple(map(tuple, tied_groups(model))), parameters, model=model)


def template_target(path: str) -> TransferTarget:
    template = open_checkpoint(path)
    kinds = {name: template.is_parameter(name) for name in template}
    known = bool(kinds) and all(kind is not None for kind in kinds.values())
    parameters = frozenset(name for name, kind in kinds.items() if kind) if known else None
    return TransferTarget(path, template.specs, (), parameters, template=template)


def open_source(source: Any, options: TransferOptions) -> tuple[Mapping[str, Any], str, CheckpointInfo | None]:
    """The source as a mapping of tensors, its label for the report, and what the reader found out."""
    if isinstance(source, Checkpoint):
        return source, source.info.path, source.info
    if isinstance(source, (str, os.PathLike)):
        checkpoint = open_checkpoint(source, container=options.container, trust=options.trust)
        return checkpoint, os.fspath(source), checkpoint.info
    if isinstance(source, Mapping):
        odd = next((key for key, value in source.items() if not hasattr(value, "shape")), None)
        if odd is not None:
            raise MappingError(f"source is a dict, but {odd!r} holds a {type(source[odd]).__name__}, not a tensor; "
                               f"pass the checkpoint's path (the reader finds the state dict in it) or the state "
                               f"dict itself")
        return source, "<state dict>", None
    raise MappingError(f"source must be a checkpoint path, a Checkpoint or a state dict, not {type(source).__name__}")


def source_specs(source: Mapping[str, Any]) -> dict[str, TensorSpec]:
    return dict(source.specs) if isinstance(source, Checkpoint) else specs_of(source)


def plan_transfer(source: Mapping[str, TensorSpec], target: TransferTarget, options: TransferOptions) -> Plan:
    return plan_with_options(source, target.specs, options.plan, target.tied)


def check_gates(plan: Plan, gates: Gates) -> list[str]:
    """Messages for every gate the plan fails (empty when all pass)."""
    failures = []
    if gates.strict:
        unused_ok = [compile_pattern(pattern, "--allow-unused") for pattern in gates.allow_unused]
        new_ok = [compile_pattern(pattern, "--allow-new") for pattern in gates.allow_new]
        unused = [u.source for u in plan.unused if not is_bookkeeping(u.source) and not _any(unused_ok, u.source)]
        new = [s.target for s in plan.steps
               if s.action == INIT and not is_bookkeeping(s.target) and not _any(new_ok, s.target)]
        if unused:
            failures.append(f"--strict: {len(unused)} source tensors unused (e.g. {unused[0]}); "
                            f"allow them with --allow-unused PATTERN")
        if new:
            failures.append(f"--strict: {len(new)} target tensors neither loaded nor resized (e.g. {new[0]}); "
                            f"allow them with --allow-new PATTERN")
    if gates.min_coverage is not None:
        counted = [s for s in plan.steps if not is_bookkeeping(s.target)]
        covered = sum(1 for s in counted if s.is_transferred) / max(1, len(counted))
        if covered < gates.min_coverage:
            failures.append(f"--min-coverage {gates.min_coverage:g}: only {covered:.1%} of target tensors were "
                            f"loaded or resized")
    return failures


def _any(predicates: Iterable[Callable[[str], bool]], name: str) -> bool:
    return any(matches(name) for matches in predicates)


def run_transfer(source: Any, target: TransferTarget, options: TransferOptions, *, dry_run: bool = False,
                 out: str | None = None, recipe: RecipeOrigin | None = None,
                 inputs: Mapping[str, str] | None = None, format: str | None = None,
                 max_shard_size: int | str | None = None, force: bool = True) -> Report:
    """Plan ``source`` into ``target``, check the gates, and (unless a gate fails or ``dry_run``) apply it:
    into the live model (then written to ``out`` if given) or streamed from the template into ``out``.
    ``format`` (default from the extension), ``max_shard_size`` and ``force`` say how ``out`` is written
    (see :func:`~ckptsurgeon.io.writer.write_streamed`).

    Returns the Report; gate failures are in ``report.gate_failures`` (the callers decide how to fail).
    """
    from .report import Report, report_metadata

    checkpoint, label, info = open_source(source, options)
    plan = plan_transfer(source_specs(checkpoint), target, options)
    report = Report(plan, label, target.label, info, gate_failures=tuple(check_gates(plan, options.gates)),
                    inputs=dict(inputs or {}), parameters=target.parameters, recipe=recipe)
    if report.gate_failures or dry_run:
        return report
    report = dataclasses.replace(report, output=out, applied=True)
    seed = options.plan.seed
    if target.template is not None:
        from .apply import write_plan

        if out is None:
            raise MappingError(f"a template target ({target.label}) is written to a file: give an output path")
        write_plan(plan, checkpoint, target.template, out, seed=seed, metadata=report_metadata(report),
                   format=format, max_shard_size=max_shard_size, force=force)
        return report
    from .apply import apply_to_model

    assert target.model is not None   # a TransferTarget holds a model or a template
    started = apply_to_model(plan, checkpoint, target.model, seed=seed)
    if started:
        report = dataclasses.replace(report, identity=started)
    if out is not None:
        from .io.writer import write_state_dict

        write_state_dict(out, target.model.state_dict(), metadata=report_metadata(report), inputs=[label],
                         force=force, format=format, max_shard_size=max_shard_size)
    return report
