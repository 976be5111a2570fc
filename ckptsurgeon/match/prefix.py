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
WRAPPERS = (("", "module."), ("module.", ""), ("", "_orig_mod."), ("_orig_mod.", ""), ("", "model."), ("model.", ""))


def moved_name(name: str, move: tuple[str, str]) -> str:
    removed, added = move
    return added + name[len(removed):] if name.startswith(removed) else name


def unmoved_name(name: str, move: tuple[str, str] | None) -> str:
    """The name a moved key had before the move."""
    if move is None:
        return name
    removed, added = move
    return removed + name[len(added):] if name.startswith(added) else name


_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


def mask_indices(name: str) -> str:
    """``backbone.3.conv.weight`` -> ``backbone.#.conv.weight``: the name without its positions."""
    return _INDEX.sub("#", name)


def masked_shapes(specs: Mapping[str, TensorSpec]) -> dict[str, set[tuple[int, ...]]]:
    out: dict[str, set[tuple[int, ...]]] = {}
    for name, spec in specs.items():
        out.setdefault(mask_indices(name), set()).add(spec.shape)
    return out


def count_agreeing(source: Mapping[str, TensorSpec], masked_target: dict[str, set[tuple[int, ...]]],
                   move: tuple[str, str]) -> int:
    """How many source keys land on a target name of their shape after the move, indices aside (they may shift)."""
    return sum(1 for name, spec in source.items()
               if spec.shape in masked_target.get(mask_indices(moved_name(name, move)), ()))


def _ends_at_index(prefix: str) -> bool:
    return prefix.rstrip(".").rpartition(".")[2].isdigit()


def detect_prefix_move(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> tuple[str, str] | None:
    """The (removed, added) prefix pair that explains most of the smaller side and clearly more keys than the
    names as they are, or None."""
    if not source or not target:
        return None
    half = min(len(source), len(target)) // 2
    if sum(1 for name in source if name in target) > half:
        return None
    masked = masked_shapes(target)
    as_is = count_agreeing(source, masked, ("", ""))
    if as_is > half:
        return None
    candidates = [move for move, _ in _vote(source, target).most_common(FINALISTS)] + list(WRAPPERS)
    scored = []
    for move in dict.fromkeys(candidates):
        if move == ("", "") or _ends_at_index(move[0]) or _ends_at_index(move[1]):
            continue
        count = count_agreeing(source, masked, move)
        if count > max(as_is, half) and _explains_what_it_moves(source, masked, move) \
                and not _still_home(source, target, move):
            exact = sum(1 for name in source if moved_name(name, move) in target)
            scored.append((count, exact, -len(move[0]) - len(move[1]), move))
    # most keys explained, then most exact names, then the smallest change of name
    return max(scored)[3] if scored else _wrapper_move(source, target)


def _wrapper_move(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> tuple[str, str] | None:
    """A wrapper on every key of one side and none of the other (a DataParallel or compiled target, a
    Lightning ``model.``) is a move whatever else changed inside."""
    for removed, added in WRAPPERS:
        if removed and all(n.startswith(removed) for n in source) and not any(n.startswith(removed) for n in target):
            return removed, added
        if added and all(n.startswith(added) for n in target) and not any(n.startswith(added) for n in source):
            return removed, added
    return None


def _explains_what_it_moves(source: Mapping[str, TensorSpec], masked: dict[str, set[tuple[int, ...]]],
                            move: tuple[str, str]) -> bool:
    moved = {name: spec for name, spec in source.items() if name.startswith(move[0])}
    return count_agreeing(moved, masked, move) * 2 > len(moved)


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
