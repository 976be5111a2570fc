"""Key names as a module tree: ``backbone.dark3.1.cv1.conv.weight`` lives in ``backbone.dark3.1.cv1.conv``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Container, Iterable

from .specs import TensorSpec


def parent_of(name: str) -> str:
    """The module path of a key ('' for a top-level tensor such as ``cls_token``)."""
    return name.rpartition(".")[0]


def leaf_of(name: str) -> str:
    return name.rpartition(".")[2]


@dataclass
class ModuleNode:
    name: str
    path: str
    numel: int = 0          # elements of every tensor below, parameters and buffers
    param_numel: int = 0    # of those, elements of tensors named in build_tree's ``parameters``
    tensors: int = 0
    children: dict[str, "ModuleNode"] = field(default_factory=dict)


def build_tree(specs: Iterable[TensorSpec], parameters: Container[str] = frozenset()) -> ModuleNode:
    """Aggregate element and tensor counts up every module path, children in first-seen order.

    ``parameters`` names the tensors that are parameters (not buffers), where the source says so.
    """
    root = ModuleNode("", "")
    for spec in specs:
        node = root
        params = spec.numel if spec.name in parameters else 0
        _count(node, spec.numel, params)
        for part in parent_of(spec.name).split(".") if parent_of(spec.name) else ():
            path = f"{node.path}.{part}" if node.path else part
            node = node.children.setdefault(part, ModuleNode(part, path))
            _count(node, spec.numel, params)
    return root


def _count(node: ModuleNode, numel: int, param_numel: int) -> None:
    node.numel += numel
    node.param_numel += param_numel
    node.tensors += 1


_INDEX = re.compile(r"(?<=\.)(\d+)(?=\.)|^(\d+)(?=\.)")


def index_template(name: str) -> tuple[str, tuple[int, ...]]:
    """``stage.3.blocks.1.w`` -> (``stage.{}.blocks.{}.w``, (3, 1)): the numbered parts of a key."""
    return _INDEX.sub("{}", name), tuple(int(m.group(0)) for m in _INDEX.finditer(name))


def split_moved(source: str, target: str) -> tuple[str, str]:
    """The parts of two keys before their common dotted tail: (``dark3.1``, ``dark3.2``) for
    ``dark3.1.cv1.weight`` and ``dark3.2.cv1.weight``."""
    s_parts, t_parts = source.split("."), target.split(".")
    common = 0
    while common < min(len(s_parts), len(t_parts)) - 1 and s_parts[-1 - common] == t_parts[-1 - common]:
        common += 1
    return ".".join(s_parts[:len(s_parts) - common]), ".".join(t_parts[:len(t_parts) - common])


def group_names(names: Iterable[str]) -> list[str]:
    """Compress numbered siblings: ``stage.0.w``, ``stage.1.w``, ``stage.2.w`` -> ``stage.{0..2}.w``."""
    groups: dict[str, list[tuple[int, ...]]] = {}
    order: list[str] = []
    for name in names:
        template, numbers = index_template(name)
        if template not in groups:
            groups[template] = []
            order.append(template)
        groups[template].append(numbers)
    return [line for template in order for line in _expand(template, groups[template])]


def _expand(template: str, numbers: list[tuple[int, ...]]) -> list[str]:
    if not numbers[0] or len(numbers) == 1:
        return [template.format(*n) for n in numbers]
    # Group by every index but the last varying one; collapse that one into ranges.
    varying = max(range(len(numbers[0])), key=lambda i: len({n[i] for n in numbers}))
    buckets: dict[tuple[int, ...], list[int]] = {}
    for n in numbers:
        buckets.setdefault(n[:varying] + n[varying + 1:], []).append(n[varying])
    lines = []
    for rest, values in buckets.items():
        slot = _ranges(sorted(set(values)))
        parts = list(rest[:varying]) + [slot] + list(rest[varying:])
        lines.append(template.format(*parts))
    return lines


def _ranges(values: list[int]) -> str:
    if len(values) == 1:
        return str(values[0])
    spans, start, prev = [], values[0], values[0]
    for value in values[1:] + [None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        spans.append(f"{start}..{prev}" if prev > start + 1 else (f"{start},{prev}" if prev != start else str(start)))
        if value is not None:
            start = prev = value
    return "{" + ",".join(spans) + "}"
