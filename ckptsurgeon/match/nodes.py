"""Key names as a tree of modules, with the signatures structural matching compares.

``backbone.dark3.1.cv1.conv.weight`` is the tensor ``weight`` of the node ``backbone.dark3.1.cv1.conv``. A
node's ``sig`` is its whole-subtree signature (every relative tensor name and shape, bookkeeping counters
left out), ``own_sig`` that of its own tensors only (what a leaf module is). ``relative`` and ``bag``
(relative names with shapes, and the shapes alone) are computed on demand, for the few nodes that are
compared partially.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator

from ..specs import TensorSpec

_NO_CHILDREN: dict[str, Node] = {}   # shared by nodes without children / own tensors until they get some
_NO_SHAPES: dict[str, tuple[int, ...]] = {}


class Node:
    __slots__ = ("path", "shapes", "counters", "children", "sig", "_relative")

    def __init__(self, path: str) -> None:
        self.path = path
        self.shapes: dict[str, tuple[int, ...]] = _NO_SHAPES   # own tensors that make the signature
        self.counters: tuple[str, ...] = ()             # own bookkeeping tensors (num_batches_tracked)
        self.children: dict[str, Node] = _NO_CHILDREN
        self.sig = 0
        self._relative: dict[str, tuple[int, ...]] | None = None

    def __repr__(self) -> str:
        return f"Node({self.path or '<root>'})"

    @property
    def tensors(self) -> list[str]:
        return [*self.shapes, *self.counters]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    def child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def key(self, leaf: str) -> str:
        return f"{self.path}.{leaf}" if self.path else leaf

    def relative_to(self, ancestor: "Node") -> str:
        return self.path[len(ancestor.path) + 1:] if ancestor.path else self.path

    @property
    def own_sig(self) -> int:
        return hash(frozenset(self.shapes.items()))

    @property
    def relative(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the subtree (counters aside) by its name relative to this node."""
        if self._relative is None:
            out = dict(self.shapes)
            for name, child in self.children.items():
                out.update({f"{name}.{rel}": shape for rel, shape in child.relative.items()})
            self._relative = out
        return self._relative

    @property
    def bag(self) -> Counter[tuple[int, ...]]:
        """The shapes of the subtree's tensors, names aside."""
        return Counter(self.relative.values())

    def parents(self) -> dict[str, "Node"]:
        """Every node below by path -> its parent (nodes keep no parent link: trees stay free of cycles, so
        they are freed as soon as planning is done, without the cyclic garbage collector)."""
        return {child.path: node for node in self.walk() for child in node.children.values()}

    def walk(self) -> Iterator["Node"]:
        """This node and every node below it, parents first."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def keys(self) -> list[str]:
        return [node.key(leaf) for node in self.walk() for leaf in node.tensors]

    def numbered(self) -> list[tuple[int, "Node"]]:
        return sorted(((int(n), c) for n, c in self.children.items() if n.isdigit()), key=lambda p: p[0])

    def named(self) -> dict[str, "Node"]:
        return {n: c for n, c in self.children.items() if not n.isdigit()}


def build_tree(specs: Iterable[TensorSpec]) -> Node:
    root = Node("")
    nodes = {"": root}
    lookup = nodes.get
    for spec in specs:
        path, _, leaf = spec.name.rpartition(".")
        node = lookup(path) or _node_at(path, nodes)
        if leaf == "num_batches_tracked":
            node.counters += (leaf,)
        elif node.shapes is _NO_SHAPES:
            node.shapes = {leaf: spec.shape}
        else:
            node.shapes[leaf] = spec.shape
    for node in reversed(nodes.values()):   # a child is always created after its parent
        _sign(node)
    return root


def _node_at(path: str, nodes: dict[str, Node]) -> Node:
    parent_path, _, name = path.rpartition(".")
    parent = nodes.get(parent_path) or _node_at(parent_path, nodes)
    if parent.children is _NO_CHILDREN:
        parent.children = {}
    node = parent.children[name] = nodes[path] = Node(path)
    return node


def _sign(node: Node) -> None:
    """The node's signature from its own shapes and its children's signatures (already computed).
    Frozensets: order-free, so no sorting."""
    if node.children:
        children = node.children
        node.sig = hash((frozenset(node.shapes.items()), frozenset(zip(children, [c.sig for c in children.values()]))))
    else:
        node.sig = hash(frozenset(node.shapes.items()))
