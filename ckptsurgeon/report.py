"""The report of a transfer plan: counts, coverage, warnings and the plan's JSON form.

The terminal text, the JSON and the Markdown all read one :class:`~ckptsurgeon.plan.Plan`; nothing here
decides anything the plan has not. Counts leave out bookkeeping keys (``num_batches_tracked``) on both sides;
the JSON still lists every step and every unused key. Elements "from the source" are those that get source
values: all of a copy, and of a resize only what its method takes from the source (a class head grown from
1000 to 5000 rows by slice_pad: 1000 rows). Parameters are told from buffers only where the target says which
is which (a live model, a pickled module); the ``param_numel_*`` counts are null otherwise.
No torch: a dry run renders without it.

JSON schema ``ckptsurgeon.report/2`` (:meth:`Report.to_dict`; ``report/1`` had ``source`` where ``sources`` is)::

    schema, tool_version, created (UTC ISO 8601), source, target, output (null when nothing was written),
    applied (false for a dry run), inputs {str: str}, recipe {path, sha256} | null, container, container_reason, stripped_prefixes [str],
    stubbed_globals [str], options {rename, resize, init, order_fallback, seed, copy, disable},
    prefix_move {removed, added} | null,
    counts {targets, loaded, resized, new, unused_sources, sources, ambiguous, cast, numel_target,
            numel_from_source, param_numel_target, param_numel_from_source},
    headline, coverage [{module, transferred, total}],
    targets [{target, action, sources [{input, key}], strategy, method, source_shape, target_shape,
              source_dtype, target_dtype, fill, reason, reason_kind}]   one per plan step, in plan order;
              shapes are lists or null; ``input`` indexes the command's inputs (0 for a transfer's source)
    unused [{source, shape, dtype, reason, detail}],
    ambiguities [{container, chosen, alternative, rename_rule}],
    suggestions [{option, reason, loads_more}]   options that would load more, each checked by planning with it,
    warnings [str], gate_failures [str],
    identity [{module, kind, ok, reason, expected_error}]   modules an identity rule started (applied reports)
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .io.reader import CheckpointInfo
from .options import RecipeOrigin
from .plan import COPY, INIT, RESIZE, ModuleStart, Plan, Step, Unused, is_bookkeeping
from .report_render import ROOT, group_names, render_headline, render_markdown, render_terminal, short_dtype
from .resize import elements_from_source
from .specs import format_shape
from .views import human_count

REPORT_SCHEMA = "ckptsurgeon.report/2"
READABLE_SCHEMAS = ("ckptsurgeon.report/1", REPORT_SCHEMA)
LARGE_UNUSED = 1_000_000     # elements: an unused source tensor this big is worth a warning
MAX_LARGE_WARNINGS = 10


@dataclass(frozen=True)
class ReportCounts:
    """Tensor and element counts of a plan, bookkeeping keys left out."""

    targets: int
    loaded: int                # copy steps
    resized: int               # resize steps
    new: int                   # init steps
    unused_sources: int
    sources: int
    ambiguous: int
    cast: int                  # transferred steps whose source dtype differs from the target's
    numel_target: int          # elements of the target tensors, parameters and buffers
    numel_from_source: int     # of those, the elements that got source values (see elements_from_source)
    param_numel_target: int | None = None        # the same two for parameters only;
    param_numel_from_source: int | None = None   # None when the target does not say which are parameters


def source_elements(step: Step) -> int:
    """How many of the step's target elements get source values: all of a copy, none of a new tensor, and
    of a resize what its method takes from the source."""
    if step.action == COPY:
        return math.prod(step.target_shape)
    if step.action == RESIZE and step.method and step.source_shape is not None:
        return elements_from_source(step.method, step.source_shape, step.target_shape)
    return 0


def count_plan(plan: Plan, parameters: frozenset[str] | None = None) -> ReportCounts:
    """The counts of ``plan``; bookkeeping keys (``num_batches_tracked``) are not counted.

    ``parameters`` are the target keys that are parameters (not buffers); None when that is not known.
    """
    steps = [step for step in plan.steps if not is_bookkeeping(step.target)]
    params = None if parameters is None else [step for step in steps if step.target in parameters]
    moved = [step for step in steps if step.is_transferred]
    unused = [u.source for u in plan.unused if not is_bookkeeping(u.source)]
    used = {step.source for step in moved if step.source and not is_bookkeeping(step.source)}
    actions = Counter(step.action for step in steps)
    return ReportCounts(
        targets=len(steps), loaded=actions[COPY], resized=actions[RESIZE], new=actions[INIT],
        unused_sources=len(unused), sources=len(used | set(unused)), ambiguous=len(plan.ambiguities),
        cast=sum(step.is_cast for step in moved),
        numel_target=sum(math.prod(step.target_shape) for step in steps),
        numel_from_source=sum(source_elements(step) for step in steps),
        param_numel_target=None if params is None else sum(math.prod(step.target_shape) for step in params),
        param_numel_from_source=None if params is None else sum(source_elements(step) for step in params))


@dataclass(frozen=True)
class Report:
    """A plan and what happened around it: the one object every report format renders."""

    plan: Plan
    source: str                          # the source checkpoint path
    target: str                          # "--model pkg.mod:build", a template path, or a class name
    source_info: CheckpointInfo | None = None
    output: str | None = None            # the file written, if any
    applied: bool = False                # False for a dry run (nothing read), True once tensors were applied
    gate_failures: tuple[str, ...] = ()  # messages of --strict / --min-coverage gates that failed
    inputs: dict[str, str] = field(default_factory=dict)
    parameters: frozenset[str] | None = None   # target keys that are parameters; None: the target does not say
    recipe: RecipeOrigin | None = None   # the recipe the options came from
    identity: tuple[ModuleStart, ...] = ()   # modules an identity rule started (known once applied)

    def counts(self) -> ReportCounts:
        return count_plan(self.plan, self.parameters)

    def headline(self) -> str:
        """``loaded 466/472 target tensors (98.7%), 6 new, 0 resized, 12 source tensors unused;
        99.1% of parameter elements from the source``"""
        return render_headline(self.counts())

    def coverage(self) -> list[tuple[str, int, int]]:
        """(top-level module, transferred, total) in target order; top-level tensors under ``<root>``."""
        totals: dict[str, list[int]] = {}
        for step in self.plan.steps:
            if is_bookkeeping(step.target):
                continue
            top = step.target.split(".", 1)[0] if "." in step.target else ROOT
            entry = totals.setdefault(top, [0, 0])
            entry[0] += step.is_transferred
            entry[1] += 1
        return [(module, done, total) for module, (done, total) in totals.items()]

    def warnings(self) -> list[str]:
        """Zero-sized tensors, dtype casts, large unused source tensors, ambiguities, then the plan's notes."""
        plan = self.plan
        out = _zero_sized_warnings(plan) + _cast_warnings(plan) + _large_unused_warnings(plan)
        if plan.ambiguities:
            n = len(plan.ambiguities)
            out.append(f"{n} ambiguous place{'s' if n != 1 else ''}: the checkpoint cannot tell which reading "
                       f"is right; the plan took one (see 'ambiguous' for the other and the --rename that "
                       f"states it)")
        out += [f"{start.module} cannot start as the identity: {start.reason}" for start in self.identity
                if not start.ok]
        return out + list(plan.notes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, schema ``ckptsurgeon.report/2`` (see the module docstring)."""
        info, plan = self.source_info, self.plan
        return {
            "schema": REPORT_SCHEMA,
            "tool_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": self.source,
            "target": self.target,
            "output": self.output,
            "applied": self.applied,
            "inputs": dict(self.inputs),
            "recipe": {"path": self.recipe.path, "sha256": self.recipe.sha256} if self.recipe else None,
            "container": info.container if info else None,
            "container_reason": info.container_reason if info else "",
            "stripped_prefixes": list(info.stripped_prefixes) if info else [],
            "stubbed_globals": list(info.stubbed_globals) if info else [],
            "options": plan.options.as_dict(),
            "prefix_move": ({"removed": plan.prefix_move[0], "added": plan.prefix_move[1]}
                            if plan.prefix_move else None),
            "counts": asdict(self.counts()),
            "headline": self.headline(),
            "coverage": [{"module": m, "transferred": done, "total": total} for m, done, total in self.coverage()],
            "targets": [_step_dict(step) for step in plan.steps],
            "unused": [{"source": u.source, "shape": list(u.shape), "dtype": u.dtype, "reason": u.reason,
                        "detail": u.detail} for u in plan.unused],
            "ambiguities": [{"container": a.container, "chosen": a.chosen, "alternative": a.alternative,
                             "rename_rule": a.rename_rule} for a in plan.ambiguities],
            "suggestions": [s._asdict() for s in plan.suggestions],
            "warnings": self.warnings(),
            "gate_failures": list(self.gate_failures),
            "identity": [start._asdict() for start in self.identity],
        }

    def render(self, *, color: bool = False, verbose: bool = False) -> str:
        """Terminal text. ``color`` adds ANSI colours (the caller decides, e.g. from ``isatty``);
        without ``verbose`` long sections are cut at about 20 lines."""
        return render_terminal(self, color=color, verbose=verbose)

    def to_markdown(self) -> str:
        return render_markdown(self)

    def save_json(self, path: str | os.PathLike[str]) -> None:
        _write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def save_markdown(self, path: str | os.PathLike[str]) -> None:
        _write_text(path, self.to_markdown())

    def __str__(self) -> str:
        return self.render(color=False)


def report_metadata(report: Report) -> dict[str, str]:
    """A compact str -> str summary for the output file's metadata (safetensors allows strings only)."""
    info = report.source_info
    return {
        "ckptsurgeon.version": __version__,
        "ckptsurgeon.source": report.source,
        "ckptsurgeon.container": (info.container or "") if info else "",
        "ckptsurgeon.options": json.dumps(report.plan.options.as_dict(), sort_keys=True),
        "ckptsurgeon.headline": report.headline(),
        **({"ckptsurgeon.recipe": f"{report.recipe.path} sha256:{report.recipe.sha256}"} if report.recipe else {}),
    }


def _step_dict(step: Step) -> dict[str, Any]:
    return {"target": step.target, "action": str(step.action),
            "sources": [{"input": index, "key": key} for index, key in step.sources], "strategy": step.strategy,
            "method": step.method,
            "source_shape": list(step.source_shape) if step.source_shape is not None else None,
            "target_shape": list(step.target_shape), "source_dtype": step.source_dtype,
            "target_dtype": step.target_dtype, "fill": step.fill, "reason": step.reason,
            "reason_kind": step.reason_kind}


def _shaped_names(named: dict[str, tuple[int, ...]]) -> str:
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, shape in named.items():
        by_shape.setdefault(tuple(shape), []).append(name)
    return ", ".join(f"{line} {format_shape(shape)}" for shape, names in by_shape.items()
                     for line in group_names(names))


def _zero_sized_warnings(plan: Plan) -> list[str]:
    targets = {s.target: s.target_shape for s in plan.steps if 0 in s.target_shape}
    sources = {s.source: s.source_shape for s in plan.steps
               if s.source and s.source_shape is not None and 0 in s.source_shape}
    sources.update({u.source: u.shape for u in plan.unused if 0 in u.shape})
    out = []
    for side, named in (("target", targets), ("source", sources)):
        if named:
            out.append(f"zero-sized {side} tensor{'s' if len(named) != 1 else ''} (a dimension of 0, e.g. the "
                       f"weight of Linear(3, 0)): {_shaped_names(named)}")
    return out


def _cast_warnings(plan: Plan) -> list[str]:
    casts = [s for s in plan.transferred if s.is_cast and not is_bookkeeping(s.target)]
    if not casts:
        return []
    pairs = Counter(f"{short_dtype(s.source_dtype or '')} -> {short_dtype(s.target_dtype)}" for s in casts)
    kinds = ", ".join(f"{pair} ({n})" for pair, n in pairs.items())
    n = len(casts)
    return [f"{n} tensor{'s' if n != 1 else ''} cast to the target dtype: {kinds}; e.g. {casts[0].target}"]


def _large_unused_warnings(plan: Plan) -> list[str]:
    large = sorted((u for u in plan.unused if math.prod(u.shape) >= LARGE_UNUSED), key=lambda u: -math.prod(u.shape))
    out = [f"large unused source tensor {u.source} {format_shape(u.shape)} ({human_count(math.prod(u.shape))} "
           f"elements, {u.reason})" for u in large[:MAX_LARGE_WARNINGS]]
    rest = large[MAX_LARGE_WARNINGS:]
    if rest:
        total = sum(math.prod(u.shape) for u in rest)
        out.append(f"and {len(rest)} more large unused source tensors ({human_count(total)} elements)")
    return out


def _write_text(path: str | os.PathLike[str], text: str) -> None:
    # Written beside the destination, then renamed: a reader never sees half a report.
    path = os.fspath(path)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def read_report_plan(path: str | os.PathLike[str]) -> Plan:
    """The plan a JSON report (``ckptsurgeon.report/2``, or ``/1``) describes: its steps and unused keys,
    enough to pair modules again (``verify --report``)."""
    from .errors import MappingError

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        schema = data.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise MappingError(f"{path}: report schema {schema!r}, this ckptsurgeon reads {', '.join(READABLE_SCHEMAS)}")
        steps = tuple(_step_from_dict(entry) for entry in data["targets"])
        unused = tuple(Unused(u["source"], tuple(u["shape"]), u["dtype"], u["reason"], u["detail"])
                       for u in data["unused"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MappingError(f"{path}: not a readable transfer report ({type(exc).__name__}: {exc}); give the JSON "
                           f"that `transfer --report` wrote") from exc
    move = data.get("prefix_move")
    return Plan(steps, unused, prefix_move=(move["removed"], move["added"]) if move else None)


def _step_from_dict(entry: dict[str, Any]) -> Step:
    if "sources" in entry:   # report/2
        operands = tuple((int(s["input"]), str(s["key"])) for s in entry["sources"])
    else:                    # report/1: one source, of input 0
        operands = ((0, entry["source"]),) if entry["source"] is not None else ()
    first = operands[0][1] if operands else None
    simple = len(operands) <= 1 and all(index == 0 for index, _ in operands)
    shape = entry["source_shape"]
    return Step(entry["target"], entry["action"], tuple(entry["target_shape"]), entry["target_dtype"], first,
                None if shape is None else tuple(shape), entry["source_dtype"], entry["strategy"], entry["method"],
                entry["reason"], entry["fill"], () if simple else operands, entry.get("reason_kind", ""))
