"""The short report of a surgery command: what it wrote, what it changed (counts and grouped keys), what it
left out and why."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..plan import COMPUTE, COPY, Step
from ..report_render import group_names, group_pairs, module_moves, short_dtype

if TYPE_CHECKING:
    from ..report import Report

SHOWN = 12   # lines per group without --verbose


def render_surgery(report: Report, *, verbose: bool = False) -> str:
    """``rename: 558 tensors written to out.pt; 123 renamed, 435 unchanged`` and the groups below it."""
    plan, steps = report.plan, report.plan.steps
    renamed = [s for s in steps if s.action == COPY and s.sources[0][1] != s.target]
    from_inputs = Counter(s.sources[0][0] for s in steps if s.action == COPY and s.sources[0][0])
    cast = [s for s in steps if s.is_cast]
    computed = Counter((s.method or "").partition(":")[0] for s in steps if s.action == COMPUTE)
    where = f"written to {report.output}" if report.applied else "planned (dry run: nothing read or written)"
    parts = [f"{len(renamed)} renamed"] if renamed else []
    parts += [f"{n} {name}" for name, n in computed.items()]
    parts += [f"{len(cast)} cast"] if cast else []
    parts += [f"{n} from input {index}" for index, n in sorted(from_inputs.items())]
    unchanged = sum(1 for s in steps if s.action == COPY and s not in renamed and not s.is_cast
                    and not s.sources[0][0])
    parts += [f"{unchanged} unchanged"] if unchanged else []
    parts += [f"{len(plan.unused)} left out"] if plan.unused else []
    lines = [f"{report.target}: {len(steps)} tensors {where}; " + ", ".join(parts or ["nothing to do"])]
    lines += [f"input {index}: {path}" for index, path in enumerate(report.source.split(", "))]
    lines += _section("renamed", [f"{s} -> {t}" for s, t in group_pairs(module_moves(
        [(_source_name(step), step.target) for step in renamed]))], verbose)
    for name in computed:
        lines += _section(name, group_names([s.target for s in steps if (s.method or "").startswith(name)]), verbose)
    casts = Counter(f"{short_dtype(s.source_dtype or '')} -> {short_dtype(s.target_dtype)}" for s in cast)
    lines += _section("cast", [f"{pair}: {n} tensors" for pair, n in casts.items()], verbose)
    by_reason: dict[str, list[str]] = {}
    for unused in plan.unused:
        by_reason.setdefault(f"{unused.reason}" + (f" ({unused.detail})" if unused.detail else ""), []).append(unused.source)
    every = [key for step in steps for _, key in step.sources] + [unused.source for unused in plan.unused]
    for reason, names in by_reason.items():
        lines += _section(f"left out, {reason}", group_names(whole_modules(names, every)), verbose)
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)


def whole_modules(names: list[str], every: list[str]) -> list[str]:
    """``sppcspc.*`` for a module all of whose keys are in ``names``; the other names as they are."""
    total: Counter[str] = Counter()
    for key in set(every):
        for module in _modules_of(key):
            total[module] += 1
    chosen: Counter[str] = Counter()
    for key in set(names):
        for module in _modules_of(key):
            chosen[module] += 1
    out: list[str] = []
    for key in names:
        whole = next((module for module in _modules_of(key) if chosen[module] == total[module]), None)
        line = f"{whole}.*" if whole else key
        if not out or out[-1] != line:
            out.append(line)
    return list(dict.fromkeys(out))


def _modules_of(key: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the modules around a key, outermost first."""
    parts = key.split(".")[:-1]
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def _source_name(step: Step) -> str:
    index, key = step.sources[0]
    return f"[{index}] {key}" if index else key


def _section(title: str, rows: list[str], verbose: bool) -> list[str]:
    if not rows:
        return []
    shown = rows if verbose else rows[:SHOWN]
    more = [f"  ... {len(rows) - len(shown)} more (--verbose)"] if len(shown) < len(rows) else []
    return ["", f"{title} ({len(rows)}):"] + [f"  {row}" for row in shown] + more
