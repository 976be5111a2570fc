"""Nested values (tensors in tuples, lists, dicts, dataclasses, named tuples) described by shape and dtype,
never by value, and two such descriptions compared.

A description is a tree of frozen :class:`Node` records. Paths are written as Python indexes them:
``output[0]``, ``output['p3']``, ``output.boxes``. Differences are worded from the new value's side with the
old (reference) value as what was expected: ``output 0, dim 1 is 256, expected 288``. Everything here is
pure: :func:`describe_value` reads ``.shape`` and ``.dtype`` and nothing else of a tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator, Union

from ..specs import dtype_name

Key = Union[int, str]
SEQUENCES = frozenset({"tuple", "list"})
MAPPINGS = frozenset({"dict", "fields"})
MAX_DEPTH = 32   # deeper than any real output; also stops a list that contains itself


@dataclass(frozen=True)
class Node:
    """One value: a tensor (``shape``, ``dtype``), a container (``items`` in order: index or key, then the
    item) or another leaf, known by its type only (``None``, ``int``, ``float``, ``str``, ``bool``, ...).

    ``kind`` is ``tensor``, ``tuple``, ``list``, ``dict``, ``fields`` (a dataclass or named tuple, by field),
    or the leaf's type name. ``type_name`` names a container's own class when it is not the plain one."""

    kind: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    type_name: str = ""
    items: tuple[tuple[Key, Node], ...] = ()

    @property
    def is_container(self) -> bool:
        return self.kind in SEQUENCES or self.kind in MAPPINGS

    def text(self) -> str:
        """``(6, 288, 1024) float32``, ``tuple of 3``, ``dict of 2 keys``, ``Boxes (2 fields)``, ``None``."""
        if self.kind == "tensor":
            return f"{shape_text(self.shape or ())} {self.dtype}"
        count = len(self.items)
        if self.kind in SEQUENCES:
            return f"{self.type_name or self.kind} of {count}"
        if self.kind == "dict":
            return f"{self.type_name or 'dict'} of {count} key{'s' * (count != 1)}"
        if self.kind == "fields":
            return f"{self.type_name} ({count} field{'s' * (count != 1)})"
        return self.kind

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"type": "tensor", "shape": [...], "dtype": ...}``; containers carry ``items``."""
        data: dict[str, Any] = {"type": self.kind}
        if self.kind == "tensor":
            data.update(shape=list(self.shape or ()), dtype=self.dtype)
        if self.type_name:
            data["class"] = self.type_name
        if self.kind in SEQUENCES:
            data["items"] = [item.as_dict() for _, item in self.items]
        elif self.kind in MAPPINGS:
            data["items"] = {str(key): item.as_dict() for key, item in self.items}
        return data


def shape_text(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def describe_value(value: Any, *, _depth: int = 0) -> Node:
    """The :class:`Node` tree of ``value``: tensors by shape and dtype, containers by their items."""
    import torch

    if isinstance(value, torch.Tensor):
        return Node("tensor", tuple(int(d) for d in value.shape), dtype_name(value.dtype))
    if value is None:
        return Node("None")
    for leaf in (bool, int, float, str):   # bool first: it is an int
        if isinstance(value, leaf):
            return Node(leaf.__name__)
    if _depth >= MAX_DEPTH:
        return Node(f"{type(value).__name__} nested deeper than {MAX_DEPTH}")
    items: list[tuple[Key, Any]]
    if isinstance(value, tuple) and hasattr(value, "_fields"):   # a named tuple: by field
        kind, items = "fields", [(name, getattr(value, name)) for name in value._fields]
    elif isinstance(value, Mapping):
        kind, items = "dict", [(_key(key), item) for key, item in value.items()]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind, items = "fields", [(field.name, getattr(value, field.name)) for field in dataclasses.fields(value)]
    elif isinstance(value, (tuple, list)):
        kind, items = ("tuple" if isinstance(value, tuple) else "list"), list(enumerate(value))
    else:
        return Node(type(value).__name__)
    own = type(value).__name__
    type_name = "" if own == kind else own
    return Node(kind, type_name=type_name,
                items=tuple((key, describe_value(item, _depth=_depth + 1)) for key, item in items))


def _key(key: Any) -> Key:
    return key if isinstance(key, (int, str)) and not isinstance(key, bool) else repr(key)


@dataclass(frozen=True)
class Where:
    """A place in a description: ``root`` and the accessors below it (``[0]``, ``['p3']``, ``.boxes``).

    ``path`` is how tables write it (``output[0]``); ``spoken`` is how differences do (``output 0``), or
    ``label`` followed by the path's accessors when ``label`` is set (``stage dark3[0]``)."""

    root: str
    accessors: tuple[str, ...] = ()
    label: str = ""

    def child(self, parent: Node, key: Key) -> Where:
        if parent.kind == "fields":
            accessor = f".{key}"
        elif parent.kind == "dict":
            accessor = f"[{key!r}]"
        else:
            accessor = f"[{key}]"
        return Where(self.root, self.accessors + (accessor,), self.label)

    @property
    def path(self) -> str:
        return self.root + "".join(self.accessors)

    @property
    def spoken(self) -> str:
        if self.label:
            return self.label + "".join(self.accessors)
        if not self.accessors:
            return self.root
        first = self.accessors[0]
        first = first if first.startswith(".") else " " + first[1:-1]
        return self.root + first + "".join(self.accessors[1:])


def walk(node: Node, where: Where) -> Iterator[tuple[Where, Node]]:
    """Every node with its place, parents first, in order."""
    yield where, node
    for key, item in node.items:
        yield from walk(item, where.child(node, key))


def flatten(node: Node, where: Where) -> list[tuple[str, Node]]:
    """The rows of a table: each leaf (and each empty container) with its path."""
    return [(place.path, item) for place, item in walk(node, where) if not (item.is_container and item.items)]


@dataclass(frozen=True)
class Difference:
    """One way the new value differs from the expected (old, reference) one.

    ``section`` is ``input``, ``output`` or ``stage``; ``path`` is the row of the table it points at
    (``output[0]``); ``kind`` is ``shape``, ``dtype``, ``type``, ``missing`` or ``new``."""

    section: str
    path: str
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Wording:
    """How a comparison talks about counts at the top level: ``the old returns 3 outputs, the new 2``."""

    verb: str = "has"
    noun: str = "items there"
    key: str = "key"


def compare_nodes(old: Node, new: Node, where: Where, section: str, wording: Wording = Wording()) -> list[Difference]:
    """Every difference in structure, count, dtype or shape between ``new`` and the expected ``old``."""

    def differ(kind: str, message: str, place: Where = where) -> Difference:
        return Difference(section, place.path, kind, message)

    if old.kind == "tensor" and new.kind == "tensor":
        return _compare_tensors(old, new, where, differ)
    found: list[Difference] = []
    if old.kind != new.kind and not _same_family(old, new):
        return [differ("type", f"{where.spoken}: {_typed(new)}, expected {_typed(old)}")]
    if old.kind != new.kind or old.type_name != new.type_name:
        found.append(differ("type", f"{where.spoken}: {_typed(new)}, expected {_typed(old)}"))
    if old.kind in SEQUENCES:
        found += _compare_sequences(old, new, where, section, wording, differ)
    elif old.kind in MAPPINGS:
        found += _compare_mappings(old, new, where, section, wording, differ)
    return found


def _same_family(old: Node, new: Node) -> bool:
    return {old.kind, new.kind} <= SEQUENCES or {old.kind, new.kind} <= MAPPINGS


def _typed(node: Node) -> str:
    return f"tensor {node.text()}" if node.kind == "tensor" else node.text()


def _compare_tensors(old: Node, new: Node, where: Where, differ: Any) -> list[Difference]:
    found: list[Difference] = []
    old_shape, new_shape = old.shape or (), new.shape or ()
    if len(old_shape) != len(new_shape):
        found.append(differ("shape", f"{where.spoken}, shape {shape_text(new_shape)}, expected {shape_text(old_shape)}"))
    else:
        found += [differ("shape", f"{where.spoken}, dim {dim} is {got}, expected {want}")
                  for dim, (want, got) in enumerate(zip(old_shape, new_shape)) if want != got]
    if old.dtype != new.dtype:
        found.append(differ("dtype", f"{where.spoken}, dtype {new.dtype}, expected {old.dtype}"))
    return found


def _compare_sequences(old: Node, new: Node, where: Where, section: str, wording: Wording,
                       differ: Any) -> list[Difference]:
    found: list[Difference] = []
    counts = f"the old {wording.verb} {len(old.items)} {wording.noun}, the new {len(new.items)}"
    for index in range(max(len(old.items), len(new.items))):
        place = where.child(old if index < len(old.items) else new, index)
        if index >= len(new.items):
            found.append(differ("missing", f"{place.spoken}: missing ({counts})", place))
        elif index >= len(old.items):
            found.append(differ("new", f"{place.spoken}: new ({counts})", place))
        else:
            found += compare_nodes(old.items[index][1], new.items[index][1], place, section)
    return found


def _compare_mappings(old: Node, new: Node, where: Where, section: str, wording: Wording,
                      differ: Any) -> list[Difference]:
    found: list[Difference] = []
    noun = "field" if new.kind == "fields" and old.kind == "fields" else wording.key
    new_items = dict(new.items)
    for key, item in old.items:
        place = where.child(old, key)
        if key in new_items:
            found += compare_nodes(item, new_items[key], place, section)
        else:
            found.append(differ("missing", f"{place.spoken}: missing {noun}", place))
    old_keys = {key for key, _ in old.items}
    found += [differ("new", f"{where.child(new, key).spoken}: new {noun}", where.child(new, key))
              for key, _ in new.items if key not in old_keys]
    return found
