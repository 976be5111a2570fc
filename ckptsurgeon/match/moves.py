"""Moved sub-trees: what the descent from the roots left over on both sides, found elsewhere.

- A source sub-tree left whole (its parent matched, it did not) whose signature equals that of a target
  sub-tree left whole, the signature being unique in each model: a backbone under a new wrapper
  (``backbone.*`` -> ``body.backbone.*``), a neck moved into a ``model.`` container. Several identical
  candidates pair only where their names clearly say so; otherwise the report says ambiguous.
- A numbered container left whole whose children pair 1:1, in order, by the shapes of their tensors (names
  aside) with those of exactly one numbered container left whole on the other side: a library's renamed
  layer stack (``encoder.layer.N`` -> ``layers.N``). Its children are then descended into as usual.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Iterable

from ..plan import MOVE
from .nodes import Node
from .similarity import bag_similarity, similar_pairs
from .structure import Matcher

MIN_SHAPE_SHARE = 0.5   # of a container's child's tensor shapes the partner's child must have too


def touched_paths(keys: Iterable[str], nodes: Iterable[str] = ()) -> set[str]:
    """Every module path with a matched tensor or a matched module at or below it."""
    out: set[str] = set()
    for path in [key.rpartition(".")[0] for key in keys] + list(nodes):
        while path not in out:
            out.add(path)
            if not path:
                break
            path = path.rpartition(".")[0]
    return out


class Leftovers:
    """The sub-trees neither earlier pass touched, on both sides."""

    def __init__(self, matcher: Matcher, s_root: Node, t_root: Node) -> None:
        self.source_parents, self.target_parents = s_root.parents(), t_root.parents()
        result = matcher.result
        used = [source for source, _ in result.pairs.values()]
        self.source = touched_paths(used + list(result.ambiguous_sources), matcher.paired_source)
        self.target = touched_paths(result.pairs, matcher.paired)
        self.moved: list[tuple[str, str]] = []

    def free_source(self, node: Node) -> bool:
        return node.path not in self.source and not _overlaps(node.path, (s for s, _ in self.moved))

    def free_target(self, node: Node) -> bool:
        return node.path not in self.target and not _overlaps(node.path, (t for _, t in self.moved))

    def whole_source(self, node: Node) -> bool:
        return self.free_source(node) and _whole(node, self.source, self.source_parents)

    def whole_target(self, node: Node) -> bool:
        return self.free_target(node) and _whole(node, self.target, self.target_parents)


def _whole(node: Node, touched: set[str], parents: dict[str, Node]) -> bool:
    """Left whole: its parent was matched (or is the root), or is a wrapper of this node alone that was
    left whole itself (``encoder`` around ``encoder.layer``)."""
    parent = parents.get(node.path)
    while parent is not None and parent.path and parent.path not in touched:
        if len(parent.children) != 1:
            return False
        parent = parents.get(parent.path)
    return True


def _overlaps(path: str, others: Iterable[str]) -> bool:
    return any(path == o or path.startswith(o + ".") or o.startswith(path + ".") for o in others)


def match_moves(matcher: Matcher, s_root: Node, t_root: Node) -> None:
    free = Leftovers(matcher, s_root, t_root)
    _move_unique_subtrees(matcher, free, s_root, t_root)
    _move_numbered_containers(matcher, Leftovers(matcher, s_root, t_root), s_root, t_root)


def _move_unique_subtrees(matcher: Matcher, free: Leftovers, s_root: Node, t_root: Node) -> None:
    s_all = Counter(node.sig for node in s_root.walk() if node.path)
    t_all = Counter(node.sig for node in t_root.walk() if node.path)
    s_by_sig: dict[int, list[Node]] = defaultdict(list)
    for node in s_root.walk():
        if node.path and free.whole_source(node):
            s_by_sig[node.sig].append(node)
    t_by_sig: dict[int, list[Node]] = defaultdict(list)
    for node in t_root.walk():
        if node.path and node.sig in s_by_sig and free.free_target(node):
            t_by_sig[node.sig].append(node)
    for sig, t_nodes in t_by_sig.items():
        s_nodes = s_by_sig[sig]
        t_nodes = [n for n in t_nodes if free.free_target(n)]
        if not t_nodes:
            continue
        if len(s_nodes) != s_all[sig] or len(t_nodes) != t_all[sig]:
            # identical modules stayed matched elsewhere: only a wrapper around the same path says these moved
            chosen = _under_a_wrapper(s_nodes, t_nodes)
        elif len(s_nodes) == len(t_nodes) == 1:
            chosen = [(s_nodes[0], t_nodes[0])]
        else:
            chosen = _by_name(s_nodes, t_nodes)
            left_s = [n for n in s_nodes if n not in {s for s, _ in chosen}]
            left_t = [n for n in t_nodes if n not in {t for _, t in chosen}]
            if left_s and left_t:
                matcher.unpaired_modules(_common_parent(left_s + left_t), left_s, left_t)
        for s_node, t_node in chosen:
            matcher.match(s_node, t_node, MOVE)
            free.moved.append((s_node.path, t_node.path))


def _under_a_wrapper(s_nodes: list[Node], t_nodes: list[Node]) -> list[tuple[Node, Node]]:
    """Pairs where one path is the other under a wrapper (``conv_for_P5`` -> ``model.conv_for_P5``), each
    source and target in one such pair only."""
    pairs = [(s, t) for s in s_nodes for t in t_nodes
             if t.path.endswith("." + s.path) or s.path.endswith("." + t.path)]
    s_count, t_count = Counter(s.path for s, _ in pairs), Counter(t.path for _, t in pairs)
    return [(s, t) for s, t in pairs if s_count[s.path] == 1 and t_count[t.path] == 1]


def _by_name(s_nodes: list[Node], t_nodes: list[Node]) -> list[tuple[Node, Node]]:
    s_by, t_by = {n.path: n for n in s_nodes}, {n.path: n for n in t_nodes}
    return [(s_by[s], t_by[t]) for s, t in similar_pairs(list(s_by), list(t_by))]


def _common_parent(nodes: list[Node]) -> str:
    parts = [node.path.split(".")[:-1] for node in nodes]
    common = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return ".".join(common)


def _containers(root: Node, whole: Callable[[Node], bool]) -> list[Node]:
    return [node for node in root.walk() if node.path and len(node.children) >= 2 and whole(node)
            and all(name.isdigit() for name in node.children)]


def _compatible(source: Node, target: Node) -> bool:
    s_seq, t_seq = source.numbered(), target.numbered()
    return len(s_seq) == len(t_seq) and all(bag_similarity(s, t) >= MIN_SHAPE_SHARE
                                            for (_, s), (_, t) in zip(s_seq, t_seq))


def _move_numbered_containers(matcher: Matcher, free: Leftovers, s_root: Node, t_root: Node) -> None:
    s_conts = _containers(s_root, free.whole_source)
    t_conts = _containers(t_root, free.whole_target)
    if not s_conts or not t_conts:
        return
    partners = {s.path: [t for t in t_conts if _compatible(s, t)] for s in s_conts}
    claimed = Counter(t.path for found in partners.values() for t in found)
    for s_node in sorted(s_conts, key=lambda n: -len(n.relative)):
        found = partners[s_node.path]
        if not free.free_source(s_node) or not found:
            continue
        if len(found) == 1 and claimed[found[0].path] == 1 and free.free_target(found[0]):
            t_node = found[0]
            matcher.note_pair(s_node, t_node)
            for (_, s_child), (_, t_child) in zip(s_node.numbered(), t_node.numbered()):
                matcher.match(s_child, t_child, MOVE)
            free.moved.append((s_node.path, t_node.path))
        else:
            matcher.unpaired_modules(_common_parent([s_node, *found]), [s_node], found)
