"""Prefix moves: one consistent change of prefix that explains the keys.

A standalone backbone checkpoint into ``model.backbone.body.``, a detector's ``backbone.`` sub-tree into a
classifier, a ``module.`` or ``model.`` wrapper on either side. Candidates are voted for by pairs of keys
that share a tail, then the best few are counted exactly over all keys. A prefix that ends at a numbered
index (``layers.0.`` -> ``layers.1.``) is not a move but a shift, and is left to structural alignment.
Names decide, not shapes: a wrapped model whose layers also changed still gets its wrapper.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Mapping

from ..specs import TensorSpec

SAMPLE = 400
PER_TAIL = 32
FINALISTS = 6
STRICT_WRAPPERS = (("", "module."), ("module.", ""), ("", "_orig_mod."), ("_orig_mod.", ""))
WRAPPERS = STRICT_WRAPPERS + (("", "model."), ("model.", ""))


def moved_name(name: str, move: tuple[str, str]) -> str:
    removed, added = move
    return added + name[len(removed):] if name.startswith(removed) else name


_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def mask_indices(name: str) -> str:
    """``backbone.3.conv.weight`` -> ``backbone.#.conv.weight``: the name without its positions."""
    return _INDEX.sub("#", name)


def masked_shapes(specs: Mapping[str, TensorSpec]) -> dict[str, set[tuple[int, ...]]]:
    out: dict[str, set[tuple[int, ...]]] = {}
    for name, spec in specs.items():
        out.setdefault(mask_indices(name), set()).add(spec.shape)
    return out


def _has_index(prefix: str) -> bool:
    """A prefix with a position in it (``layers.0.``, ``head.0.fc.``) is an index shift or a single module's
    move, the structural passes' business, never a prefix move."""
    return any(part.isdigit() for part in prefix.split("."))


class _Agreement:
    """Counts, for a candidate move, the source keys that land on a target name of their shape (indices
    aside: they may shift). Masks are computed once per key; a move only swaps a masked prefix."""

    def __init__(self, source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> None:
        self.items = [(name, mask_indices(name), spec.shape) for name, spec in source.items()]
        self.masked_target = masked_shapes(target)

    def count(self, move: tuple[str, str], items: list[tuple[str, str, tuple[int, ...]]] | None = None
              ) -> tuple[int, int, int]:
        """(keys agreeing after the move, of which moved, keys moved)."""
        removed, added = move
        m_removed, m_added = mask_indices(removed), mask_indices(added)
        cut = len(m_removed)
        lookup = self.masked_target.get
        agree = agree_moved = moved = 0
        for name, masked, shape in self.items if items is None else items:
            if name.startswith(removed):
                moved += 1
                if shape in lookup(m_added + masked[cut:], ()):
                    agree += 1
                    agree_moved += 1
            elif shape in lookup(masked, ()):
                agree += 1
        return agree, agree_moved, moved


def detect_prefix_move(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> tuple[str, str] | None:
    """The (removed, added) prefix pair that explains most of the smaller side and clearly more keys than the
    names as they are, or None."""
    if not source or not target:
        return None
    half = min(len(source), len(target)) // 2
    if sum(1 for name in source if name in target) > half:
        return None
    wrapper = _wrapper_move(source, target)
    if wrapper in STRICT_WRAPPERS:   # DataParallel / compile: the whole model inside, whatever moved within
        return wrapper
    agreement = _Agreement(source, target)
    as_is = agreement.count(("", ""))[0]
    if as_is > half:
        return None
    candidates = [move for move in dict.fromkeys([m for m, _ in _vote(source, target).most_common(FINALISTS)]
                                                 + list(WRAPPERS))
                  if move != ("", "") and not _has_index(move[0]) and not _has_index(move[1])]
    scored = []
    for move in _most_promising(agreement, candidates):
        count, count_moved, moved = agreement.count(move)
        explains = count_moved * 2 > moved or move == wrapper   # a wrapper moves what changed inside too
        if count > max(as_is, half) and explains and not _still_home(source, target, move):
            exact = sum(1 for name in source if moved_name(name, move) in target)
            scored.append((count, exact, -len(move[0]) - len(move[1]), move))
    # most keys explained, then most exact names, then the smallest change of name
    return max(scored)[3] if scored else wrapper


def _most_promising(agreement: _Agreement, candidates: list[tuple[str, str]], sample: int = 4000,
                    keep: int = 3) -> list[tuple[str, str]]:
    """Large checkpoints: rank the candidates on a sample of keys and count only the best few exactly."""
    if len(agreement.items) <= sample or len(candidates) <= keep:
        return candidates
    items = agreement.items[::len(agreement.items) // sample]
    ranked = sorted(candidates, key=lambda move: -agreement.count(move, items)[0])
    return ranked[:keep]


def _wrapper_move(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> tuple[str, str] | None:
    """A wrapper on every key of one side and none of the other (a DataParallel or compiled target, a
    Lightning ``model.``) is a move whatever else changed inside."""
    for removed, added in WRAPPERS:
        if removed and all(n.startswith(removed) for n in source) and not any(n.startswith(removed) for n in target):
            return removed, added
        if added and all(n.startswith(added) for n in target) and not any(n.startswith(added) for n in source):
            return removed, added
    return None


def _still_home(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], move: tuple[str, str]) -> bool:
    """The moved sub-tree still has a place under its own name in the target (a shift or an edit there,
    not a move): then names stay as they are."""
    removed, added = move
    if not removed:
        return False
    home = set()
    for name in target:
        at = ("." + name).find("." + removed)   # under its own name, possibly inside a wrapper
        if at >= 0 and not name.startswith(added):
            home.add(mask_indices(name[at:]))
    return any(mask_indices(name) in home for name in source if name.startswith(removed))


def _tail(name: str) -> str:
    return ".".join(name.rsplit(".", 2)[-2:])


def _vote(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> Counter[tuple[str, str]]:
    by_tail: dict[str, list[str]] = {}
    for name in target:
        bucket = by_tail.setdefault(_tail(name), [])
        if len(bucket) < PER_TAIL:
            bucket.append(name)
    names = list(source)
    step = max(1, len(names) // SAMPLE)
    votes: Counter[tuple[str, str]] = Counter()
    for name in names[::step]:
        for other in by_tail.get(_tail(name), ()):
            removed, added = _move_between(name, other)
            votes[(removed, added)] += 1
            anchor = name[len(removed):].partition(".")[0] + "."
            if anchor != "." and not anchor[:-1].isdigit():   # the same move, one module deeper
                votes[(removed + anchor, added + anchor)] += 1
    return votes


def _move_between(source_name: str, target_name: str) -> tuple[str, str]:
    s_parts, t_parts = source_name.split("."), target_name.split(".")
    common = 0
    while common < min(len(s_parts), len(t_parts)) and s_parts[-1 - common] == t_parts[-1 - common]:
        common += 1
    removed = ".".join(s_parts[:len(s_parts) - common])
    added = ".".join(t_parts[:len(t_parts) - common])
    return (removed + "." if removed else "", added + "." if added else "")
