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

from collections.abc import Container

from ..plan import REGROUP
from .nodes import Node
from .similarity import pair_look_alikes
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


def _scope_leaves(scope: Node, paired: Container[str], taken: Container[str]) -> list[Node]:
    """Unpaired leaf modules reachable from ``scope`` through unpaired named modules (an unpaired member of a
    numbered container is one the alignment judged removed or new: its leaves are not regrouped)."""
    out: list[Node] = []
    stack = list(reversed(scope.children.values()))
    while stack:
        node = stack.pop()
        if node.path in paired or node.name.isdigit():
            continue
        if node.shapes and not any(node.key(leaf) in taken for leaf in node.shapes):
            out.append(node)
        stack.extend(reversed(node.children.values()))
    return out


def _pair_leaves(matcher: Matcher, s_scope: Node, t_scope: Node, s_leaves: list[Node], t_leaves: list[Node]) -> None:
    """Leaves by their own signature and their names relative to the scope; a renamed and resized one only
    with a partner sharing a same-shape tensor (names alone say little here)."""
    s_by = {node.relative_to(s_scope): node for node in s_leaves}
    t_by = {node.relative_to(t_scope): node for node in t_leaves}
    pairs, undecided = pair_look_alikes(s_by, t_by, lambda node: node.own_sig, same_shape=True)
    for s_name, t_name in pairs:
        matcher.match_leaf(s_by[s_name], t_by[t_name], REGROUP)
    for s_names, t_names in undecided:
        matcher.unpaired_modules(t_scope.path, [s_by[n] for n in s_names], [t_by[n] for n in t_names])
