"""How alike two modules or two names are: the partial evidence behind pairs that are not identical.

- :func:`partial_weight`: two modules that share relative tensor names (a block that got a child, a conv
  whose channels changed) pair by how much of their names and shapes they share. Modules that share no
  tensor name never pair this way.
- :func:`bag_similarity`: the shapes alone, for sub-trees whose names all changed (a library's renamed
  layers).
- :func:`similar_pairs`: names that clearly belong together, by shared tokens (with the abbreviations
  libraries use: ``query``/``q``, ``output``/``o``...) or, failing that, by spelling.
"""

from __future__ import annotations

import difflib
import re
from typing import Callable

from .nodes import Node

RESOLUTION = 1000
PARTIAL_MAX = 1 + RESOLUTION * (RESOLUTION + 1) + RESOLUTION


def partial_weight(source: Node, target: Node) -> int:
    """0 when the modules share no relative tensor name; otherwise 1 + the share of (name, shape) entries,
    then the share of names, each in thousandths (shapes first: the module that changed least wins)."""
    s_rel, t_rel = source.relative, target.relative
    common_names = sum(1 for name in t_rel if name in s_rel)
    if not common_names:
        return 0
    common_entries = sum(1 for name, shape in t_rel.items() if s_rel.get(name) == shape)
    names_union = len(s_rel) + len(t_rel) - common_names
    entries_union = len(s_rel) + len(t_rel) - common_entries
    return (1 + (RESOLUTION * common_entries // entries_union) * (RESOLUTION + 1)
            + RESOLUTION * common_names // names_union)


def bag_similarity(source: Node, target: Node) -> float:
    """The share of tensor shapes two sub-trees have in common, names aside (0..1)."""
    s_bag, t_bag = source.bag, target.bag
    common = sum((s_bag & t_bag).values())
    return common / max(sum(s_bag.values()), sum(t_bag.values()), 1)


# Spellings libraries use for the same part; each maps to one token.
_ABBREVIATIONS = {"query": "q", "key": "k", "value": "v", "output": "o", "out": "o", "attention": "attn",
                  "projection": "proj", "batchnorm": "bn", "layernorm": "ln", "embedding": "embed",
                  "embeddings": "embed", "convolution": "conv"}
_SPLIT = re.compile(r"[._\-]+|(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])")


def name_tokens(name: str) -> set[str]:
    """``attention.query`` -> {attn, q}; ``o_proj`` -> {o, proj}; ``fc1`` -> {fc, 1}."""
    tokens = (part.lower() for part in _SPLIT.split(name) if part)
    return {_ABBREVIATIONS.get(token, token) for token in tokens}


def similar_pairs(s_names: list[str], t_names: list[str], margin: float = 0.2, floor: float = 0.6
                  ) -> list[tuple[str, str]]:
    """Pairs of names that clearly belong together: mutual best by shared tokens (a strict best), then,
    among the rest, mutual best spellings that beat every other candidate by ``margin``."""
    s_tokens = {name: name_tokens(name) for name in s_names}
    t_tokens = {name: name_tokens(name) for name in t_names}

    def shared(s: str, t: str) -> float:
        return len(s_tokens[s] & t_tokens[t])

    pairs = _mutual_best(s_names, t_names, shared, margin=0.5, floor=1)
    s_rest = [n for n in s_names if n not in {s for s, _ in pairs}]
    t_rest = [n for n in t_names if n not in {t for _, t in pairs}]

    def spelling(s: str, t: str) -> float:
        return difflib.SequenceMatcher(None, s, t).ratio()

    return pairs + _mutual_best(s_rest, t_rest, spelling, margin, floor)


def _mutual_best(s_names: list[str], t_names: list[str], score: Callable[[str, str], float], margin: float,
                 floor: float) -> list[tuple[str, str]]:
    def best(scores: list[tuple[float, str]]) -> str | None:
        scores.sort(reverse=True)
        if not scores or scores[0][0] < floor:
            return None
        if len(scores) > 1 and scores[0][0] - scores[1][0] < margin:
            return None
        return scores[0][1]

    pairs = []
    for t in t_names:
        s = best([(score(s, t), s) for s in s_names])
        if s is not None and best([(score(s, other), other) for other in t_names]) == t:
            pairs.append((s, t))
    return pairs


def changed_pairs(s_nodes: dict[str, Node], t_nodes: dict[str, Node], *, same_shape: bool = False
                  ) -> list[tuple[str, str]]:
    """Modules that share tensor names but changed (renamed and resized): mutual unique best partners by
    :func:`partial_weight`, then, among equally good ones, clear name evidence. With ``same_shape``, only
    modules that share a tensor of the same name and shape are candidates."""
    floor = RESOLUTION + 1 if same_shape else 0   # above it, some (name, shape) entry is shared
    scores = {(s, t): w if w > floor else 0 for s, s_node in s_nodes.items() for t, t_node in t_nodes.items()
              for w in [partial_weight(s_node, t_node)]}
    chosen = []
    for (s, t), score in scores.items():
        rivals = [v for (s2, t2), v in scores.items() if (s2 == s) != (t2 == t)]
        if score and all(score > v for v in rivals):
            chosen.append((s, t))
    s_rest = [s for s in s_nodes if s not in {s for s, _ in chosen}]
    t_rest = [t for t in t_nodes if t not in {t for _, t in chosen}]
    return chosen + [(s, t) for s, t in similar_pairs(s_rest, t_rest) if scores[(s, t)]]


def pair_look_alikes(s_nodes: dict[str, Node], t_nodes: dict[str, Node], signature: Callable[[Node], int], *,
                     same_shape: bool = False) -> tuple[list[tuple[str, str]], list[tuple[list[str], list[str]]]]:
    """Pair modules saved under other names: a signature unique on both sides; several of one signature only
    where names clearly say so; the rest by :func:`changed_pairs`. Returns the pairs, and the groups of
    identical modules that nothing tells apart (left unpaired: the caller says so)."""
    by_sig: dict[int, tuple[list[str], list[str]]] = {}
    for name, node in s_nodes.items():
        by_sig.setdefault(signature(node), ([], []))[0].append(name)
    for name, node in t_nodes.items():
        by_sig.setdefault(signature(node), ([], []))[1].append(name)
    pairs: list[tuple[str, str]] = []
    undecided: list[tuple[list[str], list[str]]] = []
    s_done: set[str] = set()
    t_done: set[str] = set()
    for s_names, t_names in by_sig.values():
        if not s_names or not t_names:
            continue
        chosen = [(s_names[0], t_names[0])] if len(s_names) == len(t_names) == 1 else similar_pairs(s_names, t_names)
        pairs += chosen
        s_done.update(s for s, _ in chosen)
        t_done.update(t for _, t in chosen)
        s_rest = [n for n in s_names if n not in s_done]
        t_rest = [n for n in t_names if n not in t_done]
        if s_rest and t_rest:
            undecided.append((s_rest, t_rest))
            s_done.update(s_rest)
            t_done.update(t_rest)
    pairs += changed_pairs({n: c for n, c in s_nodes.items() if n not in s_done},
                           {n: c for n, c in t_nodes.items() if n not in t_done}, same_shape=same_shape)
    return pairs, undecided
