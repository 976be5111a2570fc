"""One-call transfer for training scripts and the CLI: plan, gate, apply, report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import GateFailed, MappingError
from .io import Checkpoint, CheckpointInfo, open_checkpoint
from .match.planner import plan_with_options
from .match.rules import compile_pattern
from .plan import INIT, Plan, PlanOptions, is_bookkeeping
from .specs import TensorSpec, specs_of


@dataclass(frozen=True)
class Gates:
    """Checks decided on the plan before any tensor is read."""

    strict: bool = False
    allow_unused: tuple[str, ...] = ()
    allow_new: tuple[str, ...] = ()
    min_coverage: float | None = None


@dataclass(frozen=True)
class TransferOptions:
    plan: PlanOptions = field(default_factory=PlanOptions)   # rename, resize, init, order fallback, seed
    container: str | None = None
    trust: bool = False
    gates: Gates = field(default_factory=Gates)


def check_gates(plan: Plan, gates: Gates) -> list[str]:
    """Messages for every gate the plan fails (empty when all pass)."""
    failures = []
    if gates.strict:
        unused_ok = [compile_pattern(p, "--allow-unused") for p in gates.allow_unused]
        new_ok = [compile_pattern(p, "--allow-new") for p in gates.allow_new]
        unused = [u.source for u in plan.unused if not is_bookkeeping(u.source) and not any(ok(u.source) for ok in unused_ok)]
        new = [s.target for s in plan.steps
               if s.action == INIT and not is_bookkeeping(s.target) and not any(ok(s.target) for ok in new_ok)]
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


def _source_checkpoint(source: Any, options: TransferOptions) -> tuple[Mapping[str, Any], str, CheckpointInfo | None]:
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


def target_parameters(target: Any) -> frozenset[str] | None:
    """The target keys that are parameters rather than buffers: a live model's ``named_parameters``, or what
    a pickled-module template says; None when the target cannot tell (a plain state dict or safetensors)."""
    if hasattr(target, "named_parameters"):
        return frozenset(name for name, _ in target.named_parameters(remove_duplicate=False))
    if isinstance(target, Checkpoint):
        kinds = {name: target.is_parameter(name) for name in target}
        if kinds and all(kind is not None for kind in kinds.values()):
            return frozenset(name for name, kind in kinds.items() if kind)
    return None


def plan_transfer(source_specs_: Mapping[str, TensorSpec], target_specs: Mapping[str, TensorSpec],
                  options: TransferOptions, tied: Iterable[Iterable[str]] = ()) -> Plan:
    return plan_with_options(source_specs_, target_specs, options.plan, tied)


def transfer(source: Any, model: Any, *, rename: Iterable[str] = (), resize: Iterable[str] = (),
             init: Iterable[str] = (), order_fallback: bool = False, container: str | None = None,
             trust: bool = False, seed: int | None = None, dry_run: bool = False, strict: bool = False,
             allow_unused: Iterable[str] = (), allow_new: Iterable[str] = (), min_coverage: float | None = None) -> Any:
    """Transfer a pretrained checkpoint into ``model`` and return the :class:`~ckptsurgeon.report.Report`.

    Matches names (rules, exact, prefix moves, structural alignment), copies what fits, resizes what a
    ``resize`` rule covers, keeps or initialises the rest, and loads the result with ``strict=True``.

    Args:
        source: a checkpoint path, an open Checkpoint, or a state dict.
        model: the target ``nn.Module`` (DataParallel/compiled/meta-device models are fine).
        rename: ``REGEX=REPLACEMENT`` rules for source names. resize: ``PATTERN=METHOD``. init: ``PATTERN=NAME[:ARG]``.
        dry_run: plan and report only; the model is not touched and no tensor data is read.
        strict, allow_unused, allow_new, min_coverage: gates; a failure raises GateFailed (with ``.report``).
    Returns:
        The Report; ``print(report)`` shows it, ``report.save_json(path)`` keeps it.
    """
    from .apply import apply_to_model, tied_groups
    from .report import Report

    options = TransferOptions(PlanOptions(tuple(rename), tuple(resize), tuple(init), order_fallback, seed),
                              container, trust, Gates(strict, tuple(allow_unused), tuple(allow_new), min_coverage))
    checkpoint, label, info = _source_checkpoint(source, options)
    plan = plan_transfer(source_specs(checkpoint), specs_of(model.state_dict()), options, tied_groups(model))
    failures = tuple(check_gates(plan, options.gates))
    parameters = target_parameters(model)
    report = Report(plan, label, type(model).__name__, info, gate_failures=failures, parameters=parameters)
    if failures:
        raise_gate(report)
    if dry_run:
        return report
    apply_to_model(plan, checkpoint, model, seed=options.plan.seed)
    return Report(plan, label, type(model).__name__, info, applied=True, parameters=parameters)


def raise_gate(report: Any) -> None:
    error = GateFailed("; ".join(report.gate_failures))
    error.report = report  # type: ignore[attr-defined]
    raise error
