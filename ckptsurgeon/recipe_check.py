"""What each pattern of a recipe selects in a given model (or template checkpoint, or source checkpoint):
the data behind ``ckptsurgeon recipe check``. A pattern that selects nothing is usually a typo or a recipe
meant for another architecture, so it is reported as a warning."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

from .match.rules import compile_pattern, parse_copy, parse_rename
from .recipe import Recipe

if TYPE_CHECKING:
    import torch

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")   # BatchNorm buffers, never trained


@dataclass(frozen=True)
class Names:
    """The names a recipe's patterns are checked against: a model's or a checkpoint's keys, which of them are
    parameters (None: not known, then every key but BatchNorm statistics), and module types (models only)."""

    label: str
    keys: tuple[str, ...]
    parameters: frozenset[str] | None = None
    module_types: Mapping[str, str] | None = None   # module path -> class name

    def trainable(self) -> list[str]:
        if self.parameters is not None:
            return [key for key in self.keys if key in self.parameters]
        return [key for key in self.keys if key.rpartition(".")[2] not in STATISTICS]


def model_names(model: torch.nn.Module, label: str) -> Names:
    return Names(label, tuple(model.state_dict()),
                 frozenset(name for name, _ in model.named_parameters(remove_duplicate=False)),
                 {name: type(module).__name__ for name, module in model.named_modules()})


def key_names(keys: Iterable[str], label: str) -> Names:
    return Names(label, tuple(keys))


@dataclass(frozen=True)
class PatternUse:
    """One pattern of a recipe and what it selects (``selected`` is None when there was nothing to check
    it against, e.g. source patterns without ``--source``)."""

    table: str           # where it is written: "resize", "freeze.patterns", "unfreeze (epoch 50)", ...
    pattern: str
    applies_to: str      # "target keys", "parameters", "modules", "source keys"
    selected: tuple[str, ...] | None
    shadowed: bool = False   # first-match tables: every key it selects, an earlier rule takes

    @property
    def selects_nothing(self) -> bool:
        return self.selected is not None and not self.selected


@dataclass(frozen=True)
class RecipeCheck:
    recipe: Recipe
    target: Names | None
    source: Names | None
    uses: tuple[PatternUse, ...]

    def warnings(self) -> list[str]:
        out = []
        for use in self.uses:
            if use.selects_nothing:
                where = self.source.label if use.applies_to == "source keys" and self.source else self._target_label
                out.append(f"[{use.table}] '{use.pattern}' selects no {use.applies_to} of {where}")
            elif use.shadowed:
                out.append(f"[{use.table}] '{use.pattern}' never applies: the first rule that matches a key wins, "
                           f"and an earlier rule takes every key it selects (keep the table's order)")
        return out

    @property
    def _target_label(self) -> str:
        return self.target.label if self.target else "the target"


def check_recipe(recipe: Recipe, target: Names | None = None, source: Names | None = None) -> RecipeCheck:
    """Every pattern of ``recipe`` with what it selects in ``target`` (and ``source``, where given)."""
    uses: list[PatternUse] = []
    plan, gates, freeze = recipe.transfer.plan, recipe.transfer.gates, recipe.freeze
    for rule in plan.rename:
        regex = parse_rename(rule).pattern
        uses.append(_use("rename", regex.pattern, "source keys", source, _searched(regex)))
    for text in plan.copy:
        prefix = parse_copy(text).source_prefix
        uses.append(_use("copy", text, "source keys", source, _starting(prefix)))
    for table, rules in (("resize", plan.resize), ("init", plan.init)):
        uses += _first_match_uses(table, rules, target)
    for pattern in gates.allow_new:
        uses.append(_use("gates.allow_new", pattern, "target keys", target, compile_pattern(pattern, "allow_new")))
    for pattern in gates.allow_unused:
        uses.append(_use("gates.allow_unused", pattern, "source keys", source,
                         compile_pattern(pattern, "allow_unused")))
    uses += _parameter_uses(recipe, target)
    for kind in freeze.freeze_types:
        types = target.module_types if target else None
        selected = None if types is None else tuple(path or "<root>" for path, name in types.items() if name == kind)
        uses.append(PatternUse("freeze.types", kind, "modules", selected))
    return RecipeCheck(recipe, target, source, tuple(uses))


def _first_match_uses(table: str, rules: tuple[str, ...], target: Names | None) -> list[PatternUse]:
    """Rules of a first-match table, each marked when the rules before it take every key it selects."""
    uses: list[PatternUse] = []
    taken: set[str] = set()
    for text in rules:
        pattern = text.rpartition("=")[0]
        use = _use(table, pattern, "target keys", target, compile_pattern(pattern, table))
        selected = use.selected or ()
        if selected:
            use = dataclasses.replace(use, shadowed=taken.issuperset(selected))
            taken.update(selected)
        uses.append(use)
    return uses


def _parameter_uses(recipe: Recipe, target: Names | None) -> list[PatternUse]:
    freeze = recipe.freeze
    tables = [("freeze.patterns", freeze.freeze)]
    tables += [(f"unfreeze (epoch {stage.epoch})", stage.patterns) for stage in freeze.unfreeze]
    tables += [(f"optimizer.groups ({group.name})", group.patterns) for group in freeze.groups]
    from .model.selection import select_by_patterns

    names = target.trainable() if target else None
    return [PatternUse(table, selection.rule, "parameters", None if names is None else selection.names)
            for table, patterns in tables
            for selection in select_by_patterns(names or [], patterns, table)]


def _use(table: str, pattern: str, applies_to: str, names: Names | None, matches: Callable[[str], bool]
         ) -> PatternUse:
    selected = None if names is None else tuple(key for key in names.keys if matches(key))
    return PatternUse(table, pattern, applies_to, selected)


def _searched(regex: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda name: regex.search(name) is not None


def _starting(prefix: str) -> Callable[[str], bool]:
    return lambda name: name.startswith(prefix)
