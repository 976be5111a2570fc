"""Regrouped siblings: inside two paired modules, leaf modules that moved under other parents or names.

A library that regroups its modules (``attention.attention.query`` -> ``attention.q_proj``,
``intermediate.dense`` -> ``mlp.fc1``) leaves, inside each pair of matched blocks, leaf modules (the
modules that own tensors) that no name pairs. Each unpaired leaf belongs to the scope of its nearest
matched ancestor; inside one scope, a leaf signature (its own tensor names and shapes) that is unique among
the unpaired leaves on both sides pairs them. Several leaves of one signature pair only on clear name
evidence (shared tokens, ``query``/``q``...); leaves renamed and resized pair with a unique best partner
among those sharing tensor names. Otherwise the report says ambiguous with the renames. The root (and a
wrapper a prefix move put around the whole model) is no scope: what is left there is a move's business (:mod:`.moves`),
decided on whole sub-trees.
"""

from __future__ import annotations

from collections import defaultdict

from ..plan import REGROUP
from .nodes import Node
from .similarity import changed_pairs, similar_pairs
from .structure import Matcher


def match_regrouped(matcher: Matcher, start: int = 0, wrapper: str = "") -> int:
    """Regroup inside the node pairs matched since ``start``; returns where the next call starts. ``wrapper``:
    the path a prefix move put around the whole model (``module``), no scope either."""
    pairs = matcher.result.pairs
    used = {source for source, _ in pairs.values()} | matcher.result.ambiguous_sources
    end = len(matcher.node_pairs)
    for s_scope, t_scope in matcher.node_pairs[start:end]:
        if s_scope.sig == t_scope.sig or not t_scope.path or f"{wrapper}.".startswith(t_scope.path + "."):
            continue
        s_leaves = _scope_leaves(s_scope, matcher.paired_source, used)
        t_leaves = _scope_leaves(t_scope, matcher.paired.keys(), pairs.keys())
        if s_leaves and t_leaves:
            _pair_leaves(matcher, s_scope, t_scope, s_leaves, t_leaves)
            used = {source for source, _ in pairs.values()} | matcher.result.ambiguous_sources
    return end


def _scope_leaves(scope: Node, paired, taken) -> list[Node]:
    """Unpaired leaf modules reachable from ``scope`` through unpaired named modules (an unpaired member of a
    numbered container is one the alignment judged removed or new: its leaves are not regrouped)."""
    out, stack = [], list(reversed(scope.children.values()))
    while stack:
        node = stack.pop()
        if node.path in paired or node.name.isdigit():
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
    done: set[Node] = set()
    for s_nodes, t_nodes in by_sig.values():
        if not t_nodes:
            continue
        if len(s_nodes) == len(t_nodes) == 1:
            matcher.match_leaf(s_nodes[0], t_nodes[0], REGROUP)
            done.update((s_nodes[0], t_nodes[0]))
            continue
        s_by = {node.relative_to(s_scope): node for node in s_nodes}
        t_by = {node.relative_to(t_scope): node for node in t_nodes}
        chosen = similar_pairs(list(s_by), list(t_by))
        for s_name, t_name in chosen:
            matcher.match_leaf(s_by[s_name], t_by[t_name], REGROUP)
        s_rest = [node for name, node in s_by.items() if name not in {s for s, _ in chosen}]
        t_rest = [node for name, node in t_by.items() if name not in {t for _, t in chosen}]
        done.update(s_by[s] for s, _ in chosen)
        done.update(t_by[t] for _, t in chosen)
        if s_rest and t_rest:   # identical leaves left on both sides: nothing tells them apart
            matcher.unpaired_modules(t_scope.path, s_rest, t_rest)
            done.update(s_rest + t_rest)
    # leaves renamed and changed (a projection regrouped and resized): unique best partners
    s_left = {node.relative_to(s_scope): node for node in s_leaves if node not in done}
    t_left = {node.relative_to(t_scope): node for node in t_leaves if node not in done}
    for s_name, t_name in changed_pairs(s_left, t_left, same_shape=True):   # names alone say little here
        matcher.match_leaf(s_left[s_name], t_left[t_name], REGROUP)
