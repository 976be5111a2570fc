"""Which module of the modified model computes what which module of the original computed, read off a
transfer plan: the pairs ``verify`` compares. Pure: names, steps and module types only.

A module of the modified model pairs with one of the original when its transferred tensors all come from
that module at the same relative depth (``backbone.dark3.2`` from ``backbone.dark3.1`` after an insertion;
``backbone.body.layer1`` from ``layer1`` after a prefix move) and that module feeds nothing else. Modules
without tensors (activations, upsampling) pair through their parents, by child name and type. The outermost
modules whose tensors are all new are *inserted*: they have no partner, and verify compares what they
return with what they were given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..plan import RESIZE, Plan, Step, is_bookkeeping
from ..tree import parent_of


@dataclass(frozen=True)
class ModulePairs:
    """``pairs``: modified module -> original module; ``inserted``: outermost all-new modules; ``resized``:
    modified module -> the resize step of its ``weight`` (outputs are compared on the rows it kept)."""

    pairs: dict[str, str] = field(default_factory=dict)
    inserted: tuple[str, ...] = ()
    resized: dict[str, Step] = field(default_factory=dict)


def module_pairs(plan: Plan, modified: Mapping[str, str], original: Mapping[str, str]) -> ModulePairs:
    """Pair the modules of ``modified`` (path -> class name) with those of ``original`` by ``plan``."""
    under = _steps_under(plan)
    feeds = _targets_fed(plan)
    pairs: dict[str, str] = {}
    new: set[str] = set()
    for path in modified:
        steps = under.get(path)
        if not path or not steps:
            continue
        moved = [step for step in steps if step.is_transferred and step.source]
        if not moved:
            if any(not is_bookkeeping(step.target) for step in steps):
                new.add(path)
            continue
        partner = _partner(path, moved)
        if partner is not None and partner in original and _feeds_only(partner, path, feeds):
            pairs[path] = partner
    _pair_tensorless(pairs, modified, original, under, root=plan.prefix_move is None)
    inserted = tuple(path for path in modified if path in new and parent_of(path) not in new)
    resized = {parent_of(step.target): step for step in plan.steps
               if step.action == RESIZE and step.target.rpartition(".")[2] == "weight"}
    return ModulePairs(pairs, inserted, resized)


def _steps_under(plan: Plan) -> dict[str, list[Step]]:
    """Module path -> the steps of every target key below it."""
    out: dict[str, list[Step]] = {}
    for step in plan.steps:
        parts = step.target.split(".")[:-1]
        for end in range(1, len(parts) + 1):
            out.setdefault(".".join(parts[:end]), []).append(step)
    return out


def _targets_fed(plan: Plan) -> dict[str, list[str]]:
    """Source key -> the target keys it feeds."""
    out: dict[str, list[str]] = {}
    for step in plan.steps:
        if step.is_transferred and step.source:
            out.setdefault(step.source, []).append(step.target)
    return out


def _partner(path: str, moved: list[Step]) -> str | None:
    """The one source module the moved tensors come from at the same relative depth, or None."""
    depth = path.count(".") + 1
    partners = set()
    for step in moved:
        below = step.target.count(".") + 1 - depth          # components of the key below ``path``
        parts = (step.source or "").split(".")
        if below >= len(parts):
            return None
        partners.add(".".join(parts[:len(parts) - below]))
        if len(partners) > 1:
            return None
    return partners.pop() if partners else None


def _feeds_only(partner: str, path: str, feeds: Mapping[str, list[str]]) -> bool:
    """Every tensor of ``partner`` that was transferred went into ``path`` (a module split in two pairs
    with neither half)."""
    prefix, inside = partner + ".", path + "."
    return all(target.startswith(inside) for source, targets in feeds.items() if source.startswith(prefix)
               for target in targets)


def _pair_tensorless(pairs: dict[str, str], modified: Mapping[str, str], original: Mapping[str, str],
                     under: Mapping[str, list[Step]], *, root: bool) -> None:
    """Children without tensors (activations, upsampling, pooling) pair through their parents: the same
    child name and class under two paired modules."""
    parents = dict(pairs)
    if root:
        parents[""] = ""
    for path, kind in modified.items():
        if not path or path in pairs or path in under:
            continue
        parent, _, leaf = path.rpartition(".")
        if parent in parents:
            other = f"{parents[parent]}.{leaf}" if parents[parent] else leaf
            if original.get(other) == kind:
                pairs[path] = other
                parents[path] = other
