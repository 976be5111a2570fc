"""Text forms of a :class:`~ckptsurgeon.report.Report`: grouped rows, shared by the terminal and Markdown.

Rows are built once from the plan (bookkeeping keys left out, names grouped with ``tree.group_names``);
the terminal and Markdown renderers only lay them out.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from .plan import (AMBIGUOUS, DROPPED, INIT, KEEP_TARGET, NO_MATCH, RESIZE, SHAPE_MISMATCH, ReasonKind, Step,
                   is_bookkeeping)
from .specs import format_shape
from .tree import group_names, index_template, split_moved

if TYPE_CHECKING:
    from .report import Report, ReportCounts

__all__ = ["ROOT", "group_names", "group_pairs", "percent", "render_headline", "render_terminal",
           "render_markdown", "short_dtype"]

ROOT = "<root>"
MAX_LINES = 20
MORE = "... and {} more (use --verbose or --report)"
UNUSED_ORDER = (NO_MATCH, SHAPE_MISMATCH, AMBIGUOUS, DROPPED)
_SHORT_DTYPE = {"float16": "fp16", "float32": "fp32", "float64": "fp64", "bfloat16": "bf16"}
_ANSI = {"green": "32", "yellow": "33", "red": "31", "magenta": "35", "cyan": "36", "bold": "1"}

Paint = Callable[[str, str], str]
Block = tuple[str | None, list[str]]     # an optional sub-header and its item lines


def percent(part: int, whole: int) -> str:
    """One decimal; never rounds up to 100.0% or down to 0.0% when that would not be true."""
    if whole == 0:
        return "n/a"
    text = f"{100.0 * part / whole:.1f}%"
    if text == "100.0%" and part < whole:
        return "99.9%"
    if text == "0.0%" and part > 0:
        return "0.1%"
    return text


def short_dtype(dtype: str) -> str:
    return _SHORT_DTYPE.get(dtype, dtype)


def render_headline(counts: "ReportCounts", paint: Paint = lambda text, colour: text) -> str:
    c = counts
    text = (f"{paint(f'loaded {c.loaded}/{c.targets} target tensors ({percent(c.loaded, c.targets)})', 'green')}, "
            f"{paint(f'{c.new} new', 'yellow')}, {paint(f'{c.resized} resized', 'yellow')}, "
            f"{paint(f'{c.unused_sources} source tensors unused', 'red')}")
    if c.ambiguous:
        text += f", {paint(f'{c.ambiguous} ambiguous', 'magenta')}"
    return text + f"; {_from_source(c)}"


def _from_source(c: "ReportCounts") -> str:
    if c.param_numel_target is None or c.param_numel_from_source is None:
        return (f"{percent(c.numel_from_source, c.numel_target)} of tensor elements from the source "
                f"(parameters and buffers: the target does not say which is which)")
    return f"{percent(c.param_numel_from_source, c.param_numel_target)} of parameter elements from the source"


# -- grouping ------------------------------------------------------------------------------------------

def group_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Group (source, target) pairs whose numbered indices all shift alike:
    ``a.2.w -> a.3.w``, ``a.3.w -> a.4.w`` give ``a.{2,3}.w -> a.{3,4}.w``."""
    buckets: dict[tuple[object, ...], list[tuple[str, str]]] = {}
    for source, target in pairs:
        buckets.setdefault(_pair_key(source, target), []).append((source, target))
    lines: list[tuple[str, str]] = []
    for members in buckets.values():
        sources = group_names(s for s, _ in members)
        targets = group_names(t for _, t in members)
        # Equal templates and equal shifts make both groupings line up one to one.
        lines += list(zip(sources, targets)) if len(sources) == len(targets) else members
    return lines


def _pair_key(source: str, target: str) -> tuple[object, ...]:
    s_template, s_nums = index_template(source)
    t_template, t_nums = index_template(target)
    shift = tuple(t - s for s, t in zip(s_nums, t_nums)) if len(s_nums) == len(t_nums) else (s_nums, t_nums)
    return s_template, t_template, shift


def _counted(steps: Sequence[Step]) -> list[Step]:
    return [step for step in steps if not is_bookkeeping(step.target)]


def renamed_rows(steps: Sequence[Step]) -> list[tuple[str, str, str]]:
    """(strategy, source, target) for copied or resized keys whose name changed."""
    by_strategy: dict[str, list[tuple[str, str]]] = {}
    for step in _counted(steps):
        if step.is_transferred and step.source and step.source != step.target:
            by_strategy.setdefault(step.strategy or "?", []).append((step.source, step.target))
    return [(strategy, s, t) for strategy, pairs in by_strategy.items() for s, t in group_pairs(module_moves(pairs))]


def module_moves(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Whole modules that moved read as one line: ``dark3.1.* -> dark3.2.*`` instead of one line a tensor."""
    moves: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for source, target in pairs:
        moves.setdefault(split_moved(source, target), []).append((source, target))
    out = []
    for (s_module, t_module), members in moves.items():
        out += [(f"{s_module}.*", f"{t_module}.*")] if len(members) > 1 and s_module and t_module else members
    return out


def resized_rows(steps: Sequence[Step]) -> list[tuple[str, str, str, str, str]]:
    """(target, method, from shape, to shape, source if its name differs)."""
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for step in _counted(steps):
        if step.action == RESIZE:
            key = (step.method or "?", format_shape(step.source_shape or ()), format_shape(step.target_shape))
            groups.setdefault(key, []).append((step.source or "?", step.target))
    return [(t, method, old, new, s if s != t else "")
            for (method, old, new), pairs in groups.items() for s, t in group_pairs(pairs)]


def describe_how(method: str | None) -> str:
    if method in (None, "", KEEP_TARGET):
        return "kept the target's initial values"
    from .errors import MappingError
    from .init import describe_init   # torch-free; imported late to keep report imports light

    try:
        return describe_init(method)
    except MappingError:
        return method


def new_rows(steps: Sequence[Step]) -> list[tuple[str, str, str]]:
    """(target, how it was initialised, reason)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for step in _counted(steps):
        if step.action == INIT:
            groups.setdefault((describe_how(step.method), _reason_kind(step)), []).append(step.target)
    return [(line, how, reason) for (how, reason), names in groups.items() for line in group_names(names)]


def _reason_kind(step: Step) -> str:
    """Per-key shape details are listed under the unused source tensors; here they group as one kind."""
    if step.source_shape is None and step.reason_kind == ReasonKind.SHAPE_MISMATCH:
        extra = step.reason.split("; ", 2)[2:]   # --init notes, if any
        return "; ".join(["shape mismatch with its source (see unused source tensors); use it with --resize "
                          "'PATTERN=METHOD'"] + extra)
    return step.reason


def unused_rows(report: "Report") -> list[tuple[str, str, str]]:
    """(reason, source, detail), reasons in a fixed order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for u in report.plan.unused:
        if not is_bookkeeping(u.source):
            groups.setdefault((u.reason, u.detail), []).append(u.source)
    rank = {reason: i for i, reason in enumerate(UNUSED_ORDER)}
    ordered = sorted(groups.items(), key=lambda item: rank.get(item[0][0], len(rank)))
    return [(reason, line, detail) for (reason, detail), names in ordered for line in group_names(names)]


# -- terminal ------------------------------------------------------------------------------------------

def _painter(on: bool) -> Paint:
    if not on:
        return lambda text, colour: text
    return lambda text, colour: f"\033[{_ANSI[colour]}m{text}\033[0m"


def _blocks(rows: Iterable[tuple[str, str]]) -> list[Block]:
    """(sub-header, line) rows -> blocks, one per run of the same sub-header."""
    blocks: list[Block] = []
    for header, line in rows:
        if not blocks or blocks[-1][0] != header:
            blocks.append((header, []))
        blocks[-1][1].append(line)
    return blocks


def _limit(blocks: list[Block], verbose: bool) -> list[str]:
    out: list[str] = []
    shown, total = 0, sum(len(lines) for _, lines in blocks)
    for header, lines in blocks:
        take = lines if verbose else lines[:max(0, MAX_LINES - shown)]
        if not take:
            break
        out += ([f"  {header}:"] if header else []) + [f"    {line}" if header else f"  {line}" for line in take]
        shown += len(take)
    return out + ([f"  {MORE.format(total - shown)}"] if shown < total else [])


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-align every column but the last; empty trailing cells are dropped."""
    widths = [min(60, max(len(row[i]) for row in rows)) for i in range(len(rows[0]) - 1)] if rows else []
    return ["  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]).rstrip() for row in rows]


def _context(report: "Report") -> list[tuple[str, list[str], str]]:
    """(label, names, note) lines about the inputs, shared by the terminal and Markdown renderers;
    source-side details are indented under the source in the terminal."""
    info, plan = report.source_info, report.plan
    items = [("source", [report.source], f" ({info.format})" if info else "")]
    if info and info.container is not None:
        items.append(("  container", [info.container or ROOT], f" ({info.container_kind}); {info.container_reason}"))
    if info and info.stripped_prefixes:
        items.append(("  prefixes stripped", list(info.stripped_prefixes), ""))
    if info and info.stubbed_globals:
        items.append(("  stood in for (not run)", list(info.stubbed_globals), ""))
    items.append(("target", [report.target], ""))
    if report.recipe is not None:
        items.append(("recipe", [report.recipe.path], f" (sha256 {report.recipe.sha256[:12]})"))
    if plan.prefix_move:
        items.append(("prefix move", [], _prefix_move(plan.prefix_move)))
    if report.output:
        items.append(("output", [report.output], ""))
    return items


def context_lines(report: "Report", verbose: bool) -> list[str]:
    lines = [f"{label}: {', '.join(names)}{note}" for label, names, note in _context(report)]
    lines.append("applied: tensors were read and transferred" if report.applied
                 else "dry run: no tensor data read, nothing written")
    started = [f"{start.module} ({start.kind})" for start in report.identity if start.ok]
    if started:
        lines.append(f"started as the identity: {', '.join(started)}")
    if verbose:
        lines.append(f"options: {json.dumps(report.plan.options.as_dict())}")
        lines += [f"input {key}: {value}" for key, value in report.inputs.items()]
    return lines


def _prefix_move(move: tuple[str, str]) -> str:
    removed, added = move
    parts = ([f"removed '{removed}'"] if removed else []) + ([f"added '{added}'"] if added else [])
    return ", ".join(parts) or "none"


def render_terminal(report: "Report", *, color: bool = False, verbose: bool = False) -> str:
    paint = _painter(color)
    steps = report.plan.steps
    coverage = "  ".join(paint(f"{m} {percent(done, total)}", "green" if done == total else "yellow")
                         for m, done, total in report.coverage())
    lines = [render_headline(report.counts(), paint)] + context_lines(report, verbose)
    lines.append(f"coverage: {coverage or 'no target tensors'}")

    renamed = renamed_rows(steps)
    resized = resized_rows(steps)
    new = new_rows(steps)
    unused = unused_rows(report)
    width = min(60, max((len(name) for _, name, _ in unused), default=0))
    sections: list[tuple[str, str, int, list[Block]]] = [
        ("renamed / moved", "green", _keys(s for s in steps if s.is_transferred and s.source not in (None, s.target)),
         _blocks((strategy, f"{s} -> {t}") for strategy, s, t in renamed)),
        ("resized", "yellow", _keys(s for s in steps if s.action == RESIZE),
         [(None, _columns([(t, m, f"from {a} to {b}", f"(source {s})" if s else "") for t, m, a, b, s in resized]))]),
        ("new (initialised)", "yellow", _keys(s for s in steps if s.action == INIT),
         _blocks((f"{how}{'; ' + reason if reason else ''}", t) for t, how, reason in new)),
        ("unused source tensors", "red", len([u for u in report.plan.unused if not is_bookkeeping(u.source)]),
         _blocks((reason, f"{name.ljust(width)}  {detail}".rstrip()) for reason, name, detail in unused)),
    ]
    for title, colour, count, blocks in sections:
        if any(lines_ for _, lines_ in blocks):
            lines += ["", paint(f"{title} ({count})", colour)] + _limit(blocks, verbose)
    if report.plan.ambiguities:
        lines += ["", paint(f"ambiguous ({len(report.plan.ambiguities)})", "magenta")]
        lines += [f"  {line}" for line in _ambiguity_lines(report)]
    if report.plan.suggestions:
        lines += ["", paint(f"suggestions ({len(report.plan.suggestions)})", "cyan")]
        lines += [f"  {s.option}: {s.reason}" for s in report.plan.suggestions]
    warnings = report.warnings()
    if warnings:
        lines += ["", paint(f"warnings ({len(warnings)})", "yellow")] + [f"  {w}" for w in warnings]
    if report.gate_failures:
        lines += ["", paint("gate failures", "red")] + [f"  {paint(g, 'red')}" for g in report.gate_failures]
    return "\n".join(lines)


def _keys(steps: Iterable[Step]) -> int:
    return sum(not is_bookkeeping(step.target) for step in steps)


def _ambiguity_lines(report: "Report") -> list[str]:
    return [f"{a.container or ROOT}: took {a.chosen}; the other reading: {a.alternative}"
            + (f"; to take it use {a.rename_rule}" if a.rename_rule else "")
            for a in report.plan.ambiguities]


# -- Markdown ------------------------------------------------------------------------------------------

def _cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    return ([f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def render_markdown(report: "Report") -> str:
    plan = report.plan
    lines = ["# ckptsurgeon transfer report", "", f"**{render_headline(report.counts())}**", ""]
    lines += [f"- {label.strip()}: {', '.join(_cell(name, True) for name in names)}{note}"
              for label, names, note in _context(report)]
    if not report.output:
        lines.append("- output: none")
    lines.append(f"- applied: {'yes' if report.applied else 'no (dry run)'}")
    lines += [f"- options: {_cell(json.dumps(plan.options.as_dict()), True)}", ""]
    lines += _table("Coverage", ("module", "transferred", "total", "coverage"),
                    [(_cell(m, True), str(d), str(t), percent(d, t)) for m, d, t in report.coverage()])
    lines += _table("Renamed / moved", ("strategy", "source", "target"),
                    [(st, _cell(s, True), _cell(t, True)) for st, s, t in renamed_rows(plan.steps)])
    lines += _table("Resized", ("target", "method", "from", "to", "source"),
                    [(_cell(t, True), m, a, b, _cell(s, True)) for t, m, a, b, s in resized_rows(plan.steps)])
    lines += _table("New (initialised)", ("target", "initialised with", "reason"),
                    [(_cell(t, True), _cell(h), _cell(r)) for t, h, r in new_rows(plan.steps)])
    lines += _table("Unused source tensors", ("source", "reason", "detail"),
                    [(_cell(s, True), r, _cell(d)) for r, s, d in unused_rows(report)])
    lines += _table("Ambiguous", ("container", "chosen", "alternative", "rename rule"),
                    [(_cell(a.container or ROOT, True), _cell(a.chosen), _cell(a.alternative),
                      _cell(a.rename_rule, True) if a.rename_rule else "")
                     for a in plan.ambiguities])
    lines += _table("Suggestions", ("option", "why"),
                    [(_cell(s.option, True), _cell(s.reason)) for s in plan.suggestions])
    for title, items in (("Warnings", report.warnings()), ("Gate failures", list(report.gate_failures))):
        if items:
            lines += [f"## {title}", ""] + [f"- {_cell(item)}" for item in items] + [""]
    return "\n".join(lines).rstrip() + "\n"
