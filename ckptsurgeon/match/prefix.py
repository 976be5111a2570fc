"""Prefix moves: one consistent change of prefix that explains the keys.

A standalone backbone checkpoint into ``model.backbone.body.``, a detector's ``backbone.`` sub-tree into a
classifier, a ``module.`` or ``model.`` wrapper on either side. Candidates are voted for by pairs of keys
that share a tail and a shape, then the best few are counted exactly over all keys.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from ..specs import TensorSpec

SAMPLE = 400
PER_TAIL = 32
FINALISTS = 6


def moved_name(name: str, move: tuple[str, str]) -> str:
    removed, added = move
    return added + name[len(removed):] if name.startswith(removed) else name


def count_agreeing(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], move: tuple[str, str]) -> int:
    """How many source keys land on a target key of the same shape after the move."""
    total = 0
    for name, spec in source.items():
        other = target.get(moved_name(name, move))
        if other is not None and other.shape == spec.shape:
            total += 1
    return total


def detect_prefix_move(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> tuple[str, str] | None:
    """The (removed, added) prefix pair that makes clearly more keys agree than names as they are, or None."""
    if not source or not target:
        return None
    as_is = count_agreeing(source, target, ("", ""))
    if as_is >= 0.5 * min(len(source), len(target)):
        return None
    votes = _vote(source, target)
    # a move must explain most of the smaller side, not one sub-tree among many
    best, best_count = None, max(as_is, min(len(source), len(target)) // 2)
    for move, _ in votes.most_common(FINALISTS):
        if move == ("", ""):
            continue
        count = count_agreeing(source, target, move)
        if count > best_count:
            best, best_count = move, count
    return best


def _tail(name: str) -> str:
    return ".".join(name.rsplit(".", 2)[-2:])


def _vote(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> Counter:
    by_tail: dict[str, list[str]] = {}
    for name in target:
        bucket = by_tail.setdefault(_tail(name), [])
        if len(bucket) < PER_TAIL:
            bucket.append(name)
    names = list(source)
    step = max(1, len(names) // SAMPLE)
    votes: Counter = Counter()
    for name in names[::step]:
        for other in by_tail.get(_tail(name), ()):
            if target[other].shape == source[name].shape:
                votes[_move_between(name, other)] += 1
    return votes


def _move_between(source_name: str, target_name: str) -> tuple[str, str]:
    s_parts, t_parts = source_name.split("."), target_name.split(".")
    common = 0
    while common < min(len(s_parts), len(t_parts)) and s_parts[-1 - common] == t_parts[-1 - common]:
        common += 1
    removed = ".".join(s_parts[:len(s_parts) - common])
    added = ".".join(t_parts[:len(t_parts) - common])
    return (removed + "." if removed else "", added + "." if added else "")
