"""Structural matching: pair source and target modules as trees, aligning numbered containers.

Each model is a tree of modules (``backbone`` -> ``dark3`` -> ``1`` -> ``cv1`` -> ``conv``) whose nodes own
tensors. Named children pair by name. Numbered children (``nn.Sequential`` / ``nn.ModuleList``) are aligned as
sequences of whole-subtree signatures (every relative tensor name and shape), so a module inserted or removed
shifts the later indices without mixing weights of different layers: the alignment that matches more
modules in order wins, and names only break ties. Cost stays near-linear: common runs at both ends are
taken first and only the gap between them is aligned.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable

from ..plan import ALIGN, SIGNATURE, Ambiguity
from ..specs import TensorSpec
from .align import align_sequences, alternative_alignment



_NO_CHILDREN: dict = {}   # shared by nodes without children / own tensors until they get some
_NO_SHAPES: dict = {}


class Node:
    """A module: its own tensors and its children. ``sig`` is the whole-subtree signature (relative names
    and shapes, bookkeeping counters left out); ``kind`` the same without shapes, computed on demand."""

    __slots__ = ("path", "shapes", "counters", "children", "sig", "_kind")

    def __init__(self, path: str) -> None:
        self.path = path
        self.shapes: dict[str, tuple[int, ...]] = _NO_SHAPES   # own tensors that make the signature
        self.counters: tuple[str, ...] = ()             # own bookkeeping tensors (num_batches_tracked)
        self.children: dict[str, Node] = _NO_CHILDREN
        self.sig = 0
        self._kind: int | None = None

    @property
    def tensors(self) -> list[str]:
        return [*self.shapes, *self.counters]

    def child_path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def key(self, leaf: str) -> str:
        return f"{self.path}.{leaf}" if self.path else leaf

    @property
    def kind(self) -> int:
        """"The same kind of module": the signature without shapes."""
        if self._kind is None:
            self._kind = hash((frozenset(self.shapes), frozenset((n, c.kind) for n, c in self.children.items())))
        return self._kind


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


def is_index(name: str) -> bool:
    return name.isdigit()


@dataclass
class StructureMatch:
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)   # target key -> (source key, strategy)
    ambiguities: list[Ambiguity] = field(default_factory=list)
    ambiguous_sources: set[str] = field(default_factory=set)


class Matcher:
    def __init__(self) -> None:
        self.result = StructureMatch()

    def match(self, source: Node, target: Node, strategy: str) -> None:
        if source.sig == target.sig:
            self._match_identical(source, target, strategy, source.path == target.path)
            return
        own = source.tensors
        for leaf in target.tensors:
            if leaf in own:
                self.result.pairs[target.key(leaf)] = (source.key(leaf), strategy)
        s_named = {n: c for n, c in source.children.items() if not is_index(n)}
        t_named = {n: c for n, c in target.children.items() if not is_index(n)}
        for name, child in t_named.items():
            if name in s_named:
                self.match(s_named[name], child, strategy)
        self._pair_renamed({n: c for n, c in s_named.items() if n not in t_named},
                           {n: c for n, c in t_named.items() if n not in s_named}, target)
        s_seq = sorted(((int(n), c) for n, c in source.children.items() if is_index(n)), key=lambda p: p[0])
        t_seq = sorted(((int(n), c) for n, c in target.children.items() if is_index(n)), key=lambda p: p[0])
        if s_seq and t_seq:
            self._align(s_seq, t_seq, target, strategy)

    def _match_identical(self, source: Node, target: Node, strategy: str, same_path: bool) -> None:
        """Equal signatures: the same relative names all the way down, so pair by name without searching."""
        pairs = self.result.pairs
        for leaf in target.shapes:
            key = target.key(leaf)
            pairs[key] = (key if same_path else source.key(leaf), strategy)
        for leaf in target.counters:  # bookkeeping counters are not in the signature
            if leaf in source.counters:
                pairs[target.key(leaf)] = (source.key(leaf), strategy)
        for name, child in target.children.items():
            other = source.children.get(name)
            if other is not None:
                self._match_identical(other, child, strategy, same_path)

    def _align(self, s_seq: list[tuple[int, Node]], t_seq: list[tuple[int, Node]], parent: Node, strategy: str) -> None:
        a, b = [node.sig for _, node in s_seq], [node.sig for _, node in t_seq]
        a_names, b_names = [i for i, _ in s_seq], [j for j, _ in t_seq]
        pairs = align_sequences(a, b, a_names, b_names)
        for i, j in pairs:
            self._pair(s_seq[i], t_seq[j], strategy)
        if len(pairs) < max(len(a), len(b)):
            other = alternative_alignment(a, b, pairs, a_names, b_names)
            if other is not None:
                self._record_ambiguity(parent, s_seq, t_seq, pairs, other)
        for s_gap, t_gap in gaps(pairs, len(a), len(b)):
            kinds = align_sequences([s_seq[i][1].kind for i in s_gap], [t_seq[j][1].kind for j in t_gap])
            for i, j in kinds:  # the same kind of module changed in place (e.g. 256 -> 288 channels)
                self._pair(s_seq[s_gap[i]], t_seq[t_gap[j]], strategy)

    def _pair(self, s_item: tuple[int, Node], t_item: tuple[int, Node], strategy: str) -> None:
        self.match(s_item[1], t_item[1], strategy if s_item[0] == t_item[0] else ALIGN)

    def _record_ambiguity(self, parent: Node, s_seq: list, t_seq: list, chosen: list[tuple[int, int]],
                          other: list[tuple[int, int]]) -> None:
        """Two readings match as many modules: keep ``chosen`` (it keeps more names), say what ``other`` is."""
        def names(seq: list, indices: set[int]) -> str:
            return ", ".join(parent.child_path(str(seq[k][0])) for k in sorted(indices)) or "none"

        new_chosen = set(range(len(t_seq))) - {j for _, j in chosen}
        new_other = set(range(len(t_seq))) - {j for _, j in other}
        unused_chosen = set(range(len(s_seq))) - {i for i, _ in chosen}
        unused_other = set(range(len(s_seq))) - {i for i, _ in other}
        renames = tuple((parent.child_path(str(s_seq[i][0])), parent.child_path(str(t_seq[j][0])))
                        for i, j in other if (i, j) not in set(chosen) and s_seq[i][0] != t_seq[j][0])
        self.result.ambiguities.append(Ambiguity(
            parent.path or "<root>",
            f"new: {names(t_seq, new_chosen)}; unused: {names(s_seq, unused_chosen)} (names kept where they could be)",
            f"new: {names(t_seq, new_other)}; unused: {names(s_seq, unused_other)}",
            renames=renames))
        for i in unused_chosen - unused_other:
            self.result.ambiguous_sources.update(_keys(s_seq[i][1]))

    def _pair_renamed(self, s_left: dict[str, Node], t_left: dict[str, Node], parent: Node) -> None:
        """Siblings saved under other names: a signature unique on both sides pairs them; several of the same
        signature pair only where name similarity is clear; otherwise nothing loads there and we say why."""
        if not s_left or not t_left:
            return
        by_sig: dict[int, tuple[list[str], list[str]]] = {}
        for name, node in s_left.items():
            by_sig.setdefault(node.sig, ([], []))[0].append(name)
        for name, node in t_left.items():
            by_sig.setdefault(node.sig, ([], []))[1].append(name)
        for s_names, t_names in by_sig.values():
            if not s_names or not t_names:
                continue
            if len(s_names) == len(t_names) == 1 and len(s_left) == len(t_left):
                self.match(s_left[s_names[0]], t_left[t_names[0]], SIGNATURE)
                continue
            chosen = _similar_pairs(s_names, t_names)
            for s_name, t_name in chosen:
                self.match(s_left[s_name], t_left[t_name], SIGNATURE)
            undecided = [n for n in s_names if n not in {s for s, _ in chosen}]
            if undecided and len(chosen) < min(len(s_names), len(t_names)):
                self._unpaired_siblings(parent, undecided, [t for t in t_names if t not in {t for _, t in chosen}],
                                        s_left)

    def _unpaired_siblings(self, parent: Node, s_names: list[str], t_names: list[str], s_left: dict[str, Node]) -> None:
        where = parent.path or "<root>"
        self.result.ambiguities.append(Ambiguity(
            where, f"nothing loaded into {', '.join(t_names)}",
            f"identical modules saved as {', '.join(s_names)}: names give no clear pairing",
            renames=tuple((parent.child_path(s), parent.child_path(t)) for s, t in zip(s_names, t_names))))
        for name in s_names:
            self.result.ambiguous_sources.update(_keys(s_left[name]))


def _similar_pairs(s_names: list[str], t_names: list[str], margin: float = 0.2, floor: float = 0.6) -> list[tuple[str, str]]:
    """Mutual best name matches that beat every other candidate by ``margin``."""
    def best(name: str, others: list[str]) -> str | None:
        scored = sorted(((difflib.SequenceMatcher(None, name, o).ratio(), o) for o in others), reverse=True)
        if not scored or scored[0][0] < floor:
            return None
        if len(scored) > 1 and scored[0][0] - scored[1][0] < margin:
            return None
        return scored[0][1]
    pairs = []
    for t_name in t_names:
        s_name = best(t_name, s_names)
        if s_name is not None and best(s_name, t_names) == t_name:
            pairs.append((s_name, t_name))
    return pairs


def _keys(node: Node) -> list[str]:
    out = [node.key(leaf) for leaf in node.tensors]
    for child in node.children.values():
        out += _keys(child)
    return out


def gaps(pairs: list[tuple[int, int]], n: int, m: int) -> list[tuple[list[int], list[int]]]:
    """The unmatched stretches between consecutive matched pairs, on both sides."""
    out = []
    prev_i, prev_j = -1, -1
    for i, j in sorted(pairs) + [(n, m)]:
        s_gap, t_gap = list(range(prev_i + 1, i)), list(range(prev_j + 1, j))
        if s_gap or t_gap:
            out.append((s_gap, t_gap))
        prev_i, prev_j = i, j
    return out


def match_structure(source: Iterable[TensorSpec], target: Iterable[TensorSpec], strategy: str) -> StructureMatch:
    """Pair target keys with source keys by structure; see the module docstring."""
    matcher = Matcher()
    matcher.match(build_tree(source), build_tree(target), strategy)
    return matcher.result
