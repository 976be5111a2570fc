"""Rendering an :class:`~ckptsurgeon.inspect.Inspection` as a table, a module tree or JSON."""

from __future__ import annotations

import json
from typing import Any, TextIO

from . import __version__
from .inspect import Inspection
from .specs import format_shape

INSPECT_SCHEMA = "ckptsurgeon.inspect/1"
UNKNOWN_KINDS = "values: parameter and buffer elements together (the file does not say which tensors are buffers)"


def human_count(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def source_lines(inspection: Inspection) -> list[str]:
    info = inspection.info
    if info is None:
        return [f"model: {inspection.source}"]
    lines = [f"file: {info.path}", f"format: {info.format}"]
    if info.container is not None:
        lines.append(f"container: {info.container or '<root>'} ({info.container_kind}); {info.container_reason}")
    if info.stripped_prefixes:
        lines.append(f"prefixes stripped: {', '.join(info.stripped_prefixes)}")
    if info.stubbed_globals:
        lines.append(f"stood in for (not run): {', '.join(info.stubbed_globals)}")
    if info.shards:
        lines.append(f"shards: {len(info.shards)}")
    if info.trusted:
        lines.append("loaded with --trust: the file's own code ran")
    return lines


def render_table(inspection: Inspection) -> str:
    rows = [(r.spec.name, format_shape(r.spec.shape), r.spec.dtype, f"{r.spec.numel:,}",
             "" if r.requires_grad is None else ("grad" if r.requires_grad else "frozen")) for r in inspection.rows]
    header = ("key", "shape", "dtype", "numel", "requires_grad" if any(r[4] for r in rows) else "")
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    out = source_lines(inspection) + [""]
    out.append(_line(header, widths))
    out.append(_line(tuple("-" * w for w in widths), widths))
    out += [_line(row, widths) for row in rows]
    out += [""] + totals_lines(inspection) + warning_lines(inspection)
    return "\n".join(out)


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    parts = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1]), cells[2].ljust(widths[2]),
             cells[3].rjust(widths[3]), cells[4]]
    return "  ".join(parts).rstrip()


def totals_lines(inspection: Inspection) -> list[str]:
    shown = len(inspection.rows)
    count = f"{shown} of {inspection.total_tensors}" if inspection.pattern else str(shown)
    by_dtype = ", ".join(f"{dtype} {human_bytes(n)}" for dtype, n in inspection.bytes_by_dtype().items())
    # A plain state dict does not say which tensors are buffers, so it has no parameter count to show.
    params = (f"parameters: {inspection.parameters:,} ({human_count(inspection.parameters)})   "
              if inspection.kinds_known else "")
    return [f"tensors: {count}   {params}elements: {inspection.numel:,}   "
            f"size: {human_bytes(inspection.nbytes)} ({by_dtype or 'none'})"]


def warning_lines(inspection: Inspection) -> list[str]:
    return [f"warning: {text}" for text in inspection.warnings]


def render_containers(inspection: Inspection) -> str:
    info = inspection.info
    if info is None or not info.containers:
        return f"{inspection.source}: one flat state dict ({inspection.total_tensors} tensors), no containers"
    width = max([24] + [len(c.path or "<root>") for c in info.containers])
    lines = [f"{'container':<{width}} {'kind':<10} {'tensors':>8}"]
    for c in info.containers:
        mark = "  <- used" if c.chosen else ""
        lines.append(f"{(c.path or '<root>'):<{width}} {c.kind:<10} {c.tensors:>8}{mark}")
    return "\n".join(lines + [info.container_reason])


def render_tree(inspection: Inspection, depth: int | None = None) -> str:
    from .tree import build_tree

    known = inspection.kinds_known
    root = build_tree((row.spec for row in inspection.rows),
                      {row.spec.name for row in inspection.rows if row.kind == "parameter"})
    note = [] if known else [UNKNOWN_KINDS]
    lines = source_lines(inspection) + [""] + note + [f"<root>  {_node_counts(root, known)}"]
    _tree_lines(root, 1, depth, known, lines)
    return "\n".join(lines + [""] + totals_lines(inspection) + warning_lines(inspection))


def _node_counts(node: Any, known: bool) -> str:
    """``128 params + 129 buffer values  5 tensors`` where kinds are known, else ``257 values  5 tensors``."""
    tensors = f"{node.tensors} tensor{'s' if node.tensors != 1 else ''}"
    if not known:
        return f"{human_count(node.numel)} values  {tensors}"
    buffers = node.numel - node.param_numel
    extra = f" + {human_count(buffers)} buffer values" if buffers else ""
    return f"{human_count(node.param_numel)} params{extra}  {tensors}"


def _tree_lines(node: Any, level: int, depth: int | None, known: bool, out: list[str]) -> None:
    if depth is not None and level > depth:
        return
    for child in node.children.values():
        out.append(f"{'  ' * level}{child.name}  {_node_counts(child, known)}")
        _tree_lines(child, level + 1, depth, known, out)


def _tensor_json(row: Any) -> dict[str, Any]:
    spec = row.spec
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, "numel": spec.numel,
            "kind": row.kind, "requires_grad": row.requires_grad}


def inspection_to_json(inspection: Inspection, *, tensors: bool = True) -> dict[str, Any]:
    """The documented machine form (schema ``ckptsurgeon.inspect/1``, see README)."""
    info = inspection.info
    return {
        "schema": INSPECT_SCHEMA,
        "tool_version": __version__,
        "source": inspection.source,
        "format": info.format if info else "model",
        "container": info.container if info else None,
        "container_kind": info.container_kind if info else "module",
        "container_reason": info.container_reason if info else "",
        "containers": [{"path": c.path, "kind": c.kind, "tensors": c.tensors, "chosen": c.chosen}
                       for c in (info.containers if info else ())],
        "stripped_prefixes": list(info.stripped_prefixes) if info else [],
        "stubbed_globals": list(info.stubbed_globals) if info else [],
        "metadata": dict(info.metadata) if info else {},
        "filter": inspection.pattern,
        "tensors": [_tensor_json(row) for row in inspection.rows] if tensors else [],
        "totals": {"tensors": len(inspection.rows), "tensors_in_source": inspection.total_tensors,
                   "parameters": inspection.parameters, "elements": inspection.numel,
                   "bytes": inspection.nbytes, "bytes_by_dtype": inspection.bytes_by_dtype()},
        "warnings": list(inspection.warnings),
    }


def write_inspection_json(inspection: Inspection, stream: TextIO) -> None:
    """The same JSON as :func:`inspection_to_json`, written tensor by tensor (flat memory at 100k tensors)."""
    head, _, tail = json.dumps(inspection_to_json(inspection, tensors=False)).partition('"tensors": []')
    stream.write(head + '"tensors": [')
    for index, row in enumerate(inspection.rows):
        stream.write(("," if index else "") + json.dumps(_tensor_json(row)))
    stream.write("]" + tail + "\n")
