"""Source names as matching sees them, and back: after the --rename rules and a prefix move each key records
where its name came from (:class:`Provenance`), so every pair and every suggested rule is stated in the
checkpoint's own names."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping

from ..errors import MappingError
from ..plan import EXACT, PREFIX, RENAME, Ambiguity
from ..specs import TensorSpec
from .prefix import moved_name
from .rules import apply_renames, parse_copy, parse_rename


@dataclass(frozen=True)
class Provenance:
    """How a source key got the name matching saw."""

    original: str
    by_rule: bool = False
    moved: bool = False


def rename_sources(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec],
                   texts: tuple[str | tuple[str, str], ...]) -> tuple[dict[str, str], dict[str, TensorSpec], dict[str, Provenance], set[str]]:
    """Apply the rename rules. A key a rule renames onto a target key is pinned to it (rules come first);
    the other keys go on to structural matching under their (possibly renamed) names.

    Returns (pinned target -> source, remaining specs by name, their provenance, dropped source keys).
    """
    if not texts:
        return {}, dict(source), {}, set()
    rules = [parse_rename(text) for text in texts]
    pinned: dict[str, str] = {}
    rest: dict[str, TensorSpec] = {}
    provenance: dict[str, Provenance] = {}
    dropped: set[str] = set()
    for name, spec in source.items():
        new = apply_renames(rules, name) if rules else name
        if not new:
            dropped.add(name)
            continue
        taken = pinned.get(new) if new != name and new in target else (original_name(new, provenance) if new in rest else None)
        if taken is not None:
            raise MappingError(f"--rename gives two source keys the same name {new!r}: {taken!r} and {name!r}; "
                               f"make the rule more specific")
        if new != name and new in target:
            pinned[new] = name
        elif new == name:
            rest[new] = spec
        else:
            rest[new] = spec.with_name(new)
            provenance[new] = Provenance(name, by_rule=True)
    return pinned, rest, provenance, dropped


def copy_sources(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], texts: tuple[str, ...]
                 ) -> dict[str, str]:
    """Target key -> source key for the --copy rules (checkpoint names). One source key may feed several
    targets; a rule that feeds no target key at all is an error (a typo would otherwise pass unseen)."""
    fed: dict[str, str] = {}
    for rule in map(parse_copy, texts):
        found = {t: name for name in source if (t := rule.target_for(name)) is not None and t in target}
        if not found:
            raise MappingError(f"--copy {rule.text!r}: no source key under {rule.source_prefix!r} has a target "
                               f"under {rule.target_prefix!r}; check both prefixes with `ckptsurgeon inspect`")
        for t, name in found.items():
            if t in fed and fed[t] != name:
                raise MappingError(f"--copy rules feed {t!r} from both {fed[t]!r} and {name!r}; keep one")
            fed[t] = name
    return fed


def original_name(name: str, provenance: Mapping[str, Provenance]) -> str:
    origin = provenance.get(name)
    return name if origin is None else origin.original


def provenance_pair(name: str, how: str, provenance: Mapping[str, Provenance]) -> tuple[str, str]:
    origin = provenance.get(name)
    return (name, how) if origin is None else (origin.original, strategy_of(how, origin))


def apply_move(named: dict[str, TensorSpec], provenance: dict[str, Provenance], move: tuple[str, str]
                ) -> tuple[dict[str, TensorSpec], dict[str, Provenance], tuple[str, str] | None]:
    """The keys under their moved names, or as they were (and no move) if the move would merge two keys."""
    moved_specs: dict[str, TensorSpec] = {}
    moved_provenance: dict[str, Provenance] = {}
    for name, spec in named.items():
        new = moved_name(name, move)
        if new in moved_specs:
            return named, provenance, None
        if new == name:
            moved_specs[new] = spec
            if name in provenance:
                moved_provenance[new] = provenance[name]
            continue
        origin = provenance.get(name)
        moved_specs[new] = spec.with_name(new)
        moved_provenance[new] = Provenance(origin.original if origin else name, bool(origin and origin.by_rule), True)
    return moved_specs, moved_provenance, move


def with_rename_rule(ambiguity: Ambiguity, rest: Mapping[str, TensorSpec], provenance: Mapping[str, Provenance]) -> Ambiguity:
    """Write the other reading as --rename options over the user's own source names, ordered so that no
    rule renames what an earlier one produced."""
    pairs = [(original_module(source, rest, provenance), target) for source, target in ambiguity.renames]
    ordered = order_rules([(s, t or "") for s, t in pairs if s is not None and s != t])
    if not ordered:
        return ambiguity
    text = " ".join(f"--rename '^{re.escape(s)}\\.={t}.'" if t else f"--rename '^{re.escape(s)}\\..*='"
                    for s, t in ordered)
    return dataclasses.replace(ambiguity, rename_rule=text)


def original_module(path: str, rest: Mapping[str, TensorSpec], provenance: Mapping[str, Provenance]) -> str | None:
    """A source module's path in the checkpoint's own names (before any prefix move or rule)."""
    for name in rest:
        if name.startswith(path + "."):
            tail = name[len(path) + 1:]
            original = original_name(name, provenance)
            return original[:-len(tail) - 1] if original.endswith("." + tail) else None
    return None


def order_rules(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rules apply one after another: a rule into X must run after the rule that moves X away."""
    pending, ordered = list(rules), []
    while pending:
        ready = [r for r in pending if not any(other[0] == r[1] for other in pending if other is not r)]
        if not ready:  # a cycle (a swap) cannot be written as rules applied in turn
            return []
        ordered += ready
        pending = [r for r in pending if r not in ready]
    return ordered


def strategy_of(found: str, origin: Provenance) -> str:
    if found != EXACT:
        return found
    if origin.by_rule:
        return RENAME
    return PREFIX if origin.moved else EXACT
