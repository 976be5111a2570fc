"""Regrouped siblings: inside two paired modules, leaf modules that moved under other parents or names.

A library that regroups its modules (``attention.attention.query`` -> ``attention.q_proj``,
``intermediate.dense`` -> ``mlp.fc1``) leaves, inside each pair of matched blocks, leaf modules (the
modules that own tensors) that no name pairs. Each unpaired leaf belongs to the scope of its nearest
matched ancestor; inside one scope, a leaf signature (its own tensor names and shapes) that is unique among
the unpaired leaves on both sides pairs them. Several leaves of one signature pair only on clear name
evidence (shared tokens, ``query``/``q``...); otherwise the report says ambiguous with the renames. The
root is no scope: what is left there is a move's business (:mod:`.moves`), decided on whole sub-trees.
"""

from __future__ import annotations

from collections import defaultdict

from ..plan import REGROUP
from .nodes import Node
from .similarity import similar_pairs
from .structure import Matcher


def match_regrouped(matcher: Matcher, s_root: Node, t_root: Node) -> None:
    pairs = matcher.result.pairs
    used = {source for source, _ in pairs.values()} | matcher.result.ambiguous_sources
    for s_scope, t_scope in list(matcher.node_pairs):
        if not t_scope.path or s_scope.sig == t_scope.sig:
            continue
        s_leaves = _scope_leaves(s_scope, matcher.paired_source, used)
        t_leaves = _scope_leaves(t_scope, matcher.paired.keys(), pairs.keys())
        if s_leaves and t_leaves:
            _pair_leaves(matcher, s_scope, t_scope, s_leaves, t_leaves)
            used = {source for source, _ in pairs.values()} | matcher.result.ambiguous_sources


def _scope_leaves(scope: Node, paired, taken) -> list[Node]:
    """Unpaired leaf modules reachable from ``scope`` through unpaired modules."""
    out, stack = [], list(reversed(scope.children.values()))
    while stack:
        node = stack.pop()
        if node.path in paired:
            continue
        if node.shapes and not any(node.key(leaf) in taken for leaf in node.shapes):
            out.append(node)
        stack.extend(reversed(node.children.values()))
    return out


def _pair_leaves(matcher: Matcher, s_scope: Node, t_scope: Node, s_leaves: list[Node], t_leaves: list[Node]) -> None:
    by_sig: dict[int, tuple[list[Node], list[Node]]] = defaultdict(lambda: ([], []))
    for node in s_leaves:
        by_sig[node.own_sig][0].append(node)
    for node in t_leaves:
        if node.own_sig in by_sig:
            by_sig[node.own_sig][1].append(node)
    for s_nodes, t_nodes in by_sig.values():
        if not t_nodes:
            continue
        if len(s_nodes) == len(t_nodes) == 1:
            matcher.match_leaf(s_nodes[0], t_nodes[0], REGROUP)
            continue
        s_by = {node.relative_to(s_scope): node for node in s_nodes}
        t_by = {node.relative_to(t_scope): node for node in t_nodes}
        chosen = similar_pairs(list(s_by), list(t_by))
        for s_name, t_name in chosen:
            matcher.match_leaf(s_by[s_name], t_by[t_name], REGROUP)
        s_rest = [node for name, node in s_by.items() if name not in {s for s, _ in chosen}]
        t_rest = [node for name, node in t_by.items() if name not in {t for _, t in chosen}]
        if s_rest and t_rest:
            matcher.unpaired_modules(t_scope.path, s_rest, t_rest)
