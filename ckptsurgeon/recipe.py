"""Recipes: a migration described in TOML (``schema = 1``, see recipes/README.md), read into the options the
transfer and the fine-tuning take. Reading checks every table, key and type, and every rule, up front: an
error names the file, the table and the key."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from .errors import MappingError, OptionError, RecipeError
from .options import (BATCHNORM_POLICIES, DEFAULT_GROUP, FREEZE_MODES, STRATEGY_SWITCHES, FreezeOptions, Gates,
                      GroupRule, PlanOptions, RecipeOrigin, TransferOptions, UnfreezeStage)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: the transfer's options, the fine-tuning's options, and where they came from."""

    transfer: TransferOptions
    freeze: FreezeOptions
    origin: RecipeOrigin
    description: str = ""

    @property
    def path(self) -> str:
        return self.origin.path

    @property
    def sha256(self) -> str:
        return self.origin.sha256


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a recipe file; raises RecipeError naming the file, table and key of any problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"{path}: not a valid TOML file ({exc})") from exc
    return parse_recipe(data, RecipeOrigin(path, hashlib.sha256(raw).hexdigest()))


def as_recipe(recipe: Recipe | str | os.PathLike[str] | None) -> Recipe | None:
    """A Recipe as given, or read from its path."""
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    return load_recipe(recipe)


def parse_recipe(data: dict[str, Any], origin: RecipeOrigin) -> Recipe:
    root = Table(origin.path, "", data)
    schema = root.take("schema", int, required=True)
    if schema != SCHEMA_VERSION:
        raise RecipeError(f"{origin.path}: schema = {schema} is not supported; this ckptsurgeon reads schema = "
                          f"{SCHEMA_VERSION}")
    description = root.take("description", str, "")
    transfer = _transfer_options(root)
    freeze = _freeze_options(root)
    root.no_other_keys()
    return Recipe(transfer, freeze, origin, description)


class Table:
    """One TOML table being read: every key taken is checked; what is left over is an error."""

    def __init__(self, path: str, name: str, data: Any) -> None:
        self.path, self.name = path, name
        if not isinstance(data, dict):
            raise self.error(f"expected a table, got {_kind(data)}")
        self.data = dict(data)

    def where(self, key: str | None = None) -> str:
        table = f"[{self.name}]" if self.name else "top level"
        return f"{self.path}: {table}" + (f" {key}" if key else "")

    def error(self, message: str, key: str | None = None) -> RecipeError:
        return RecipeError(f"{self.where(key)}: {message}")

    def take(self, key: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                raise self.error("missing (required)", key)
            return default
        value = self.data.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(f"expected {_kind_name(kind)}, got {_kind(value)} {value!r}", key)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.take(key, list, [])
        if not all(isinstance(item, str) for item in value):
            raise self.error("expected a list of strings", key)
        return tuple(value)

    def table(self, key: str) -> Table:
        return Table(self.path, f"{self.name}.{key}" if self.name else key, self.data.pop(key, {}))

    def tables(self, key: str) -> list[Table]:
        value = self.data.pop(key, [])
        name = f"{self.name}.{key}" if self.name else key
        if not isinstance(value, list):
            raise self.error(f"expected an array of tables ([[{name}]]), got {_kind(value)}", key)
        return [Table(self.path, f"{name}][{index}", item) for index, item in enumerate(value)]

    def items(self, kind: type) -> list[tuple[str, Any]]:
        """Every remaining key with its value (a table used as an ordered map, e.g. [resize])."""
        out = []
        for key in list(self.data):
            out.append((key, self.take(key, kind)))
        return out

    def no_other_keys(self) -> None:
        if self.data:
            key = next(iter(self.data))
            raise self.error("unknown key (see recipes/README.md for the schema)", key)


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(value), type(value).__name__)


def _kind_name(kind: Any) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "an array",
            dict: "a table"}.get(kind, getattr(kind, "__name__", str(kind)))


def _transfer_options(root: Table) -> TransferOptions:
    source = root.table("source")
    if "trust" in source.data:
        raise source.error("a recipe cannot run a pickle's code; pass --trust on the command line (or "
                           "trust=True in the library) for files you trust", "trust")
    container = source.take("container", str)
    source.no_other_keys()
    plan = _plan_options(root)
    gates = _gates(root.table("gates"))
    return TransferOptions(plan, container, False, gates)


def _plan_options(root: Table) -> PlanOptions:
    rename = _rename_rules(root.table("rename"))
    copy = _copy_rules(root.table("copy"))
    match = root.table("match")
    order_fallback = match.take("order_fallback", bool, False)
    seed = match.take("seed", int)
    disable = match.strings("disable")
    unknown = [name for name in disable if name not in STRATEGY_SWITCHES]
    if unknown:
        raise match.error(f"{unknown[0]!r} is not a pass that can be switched off ({', '.join(STRATEGY_SWITCHES)})",
                          "disable")
    match.no_other_keys()
    resize = _pattern_rules(root.table("resize"), _check_resize)
    init = _pattern_rules(root.table("init"), _check_init)
    return PlanOptions(rename, resize, init, order_fallback, seed, copy, disable)


def _rename_rules(table: Table) -> tuple[tuple[str, str], ...]:
    rules: list[tuple[str, str]] = []
    for index, pair in enumerate(table.take("rules", list, [])):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise table.error(f"item {index} must be a [regex, replacement] pair of strings, got {pair!r}", "rules")
        rules.append((pair[0], pair[1]))
    prefixes = table.take("prefixes", dict, {})
    for source, target in prefixes.items():
        if not isinstance(target, str):
            raise table.error(f"{source!r} must map to a string, got {_kind(target)}", "prefixes")
        rules.append(prefix_rule(source, target, table))
    table.no_other_keys()
    for rule in rules:
        _checked(table, "rules", partial(_parse_rename, rule))
    return tuple(rules)


def _parse_rename(rule: tuple[str, str]) -> None:
    from .match.rules import parse_rename

    parse_rename(rule)


def prefix_rule(source: str, target: str, table: Table | None = None) -> tuple[str, str]:
    """A torchtune-style prefix mapping (``layers.{}.attention.`` -> ``blocks.{}.attn.``, ``{}`` a layer index)
    as a ``(regex, replacement)`` rename rule."""
    holes = source.count("{}")
    if holes != target.count("{}") or not source:
        message = (f"{source!r} = {target!r}: both sides need the same number of '{{}}' (layer indices)"
                   if source else "an empty source prefix renames every key")
        if table is None:
            raise MappingError(message)
        raise table.error(message, "prefixes")
    regex = "^" + r"(\d+)".join(map(re.escape, source.split("{}")))
    if not source.endswith("."):
        regex += r"(?=\.|$)"   # a module name, not the start of a longer one
    parts = [part.replace("\\", "\\\\") for part in target.split("{}")]
    replacement = "".join(part + (f"\\g<{index}>" if index <= holes else "") for index, part in enumerate(parts, 1))
    return regex, replacement


def _copy_rules(table: Table) -> tuple[str, ...]:
    rules = []
    for source, targets in list(table.data.items()):
        value = table.take(source, object)
        targets = [value] if isinstance(value, str) else value
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise table.error("expected a target prefix or a list of them", source)
        rules += [f"{source}={target}" for target in targets]
    for rule in rules:
        _checked(table, rule.partition("=")[0], partial(_parse_copy, rule))
    return tuple(rules)


def _parse_copy(rule: str) -> None:
    from .match.rules import parse_copy

    parse_copy(rule)


def _pattern_rules(table: Table, check: Callable[[str], None]) -> tuple[str, ...]:
    rules = []
    for pattern, value in table.items(str):
        _checked(table, pattern, partial(check, f"{pattern}={value}"))
        rules.append(f"{pattern}={value}")
    return tuple(rules)


def _check_resize(rule: str) -> None:
    from .match.rules import parse_resize_rules

    parse_resize_rules([rule])


def _check_init(rule: str) -> None:
    from .match.rules import parse_init_rules

    parse_init_rules([rule])


def _checked(table: Table, key: str, check: Callable[[], object]) -> None:
    """Run a rule's own parser; its complaint is reported at the recipe's table and key."""
    try:
        check()
    except (MappingError, OptionError) as exc:
        raise table.error(str(exc), key) from exc


def _gates(table: Table) -> Gates:
    strict = table.take("strict", bool, False)
    allow_unused, allow_new = table.strings("allow_unused"), table.strings("allow_new")
    min_coverage = table.take("min_coverage", float)
    if min_coverage is not None and not 0 <= min_coverage <= 1:
        raise table.error(f"expected a fraction between 0 and 1, got {min_coverage}", "min_coverage")
    table.no_other_keys()
    for key, values in (("allow_unused", allow_unused), ("allow_new", allow_new)):
        for pattern in values:
            _checked(table, key, partial(_compile, pattern))
    return Gates(strict, allow_unused, allow_new, min_coverage)


def _compile(pattern: str) -> None:
    from .match.rules import compile_pattern

    compile_pattern(pattern, "pattern")


def _freeze_options(root: Table) -> FreezeOptions:
    freeze = root.table("freeze")
    frozen, types = freeze.strings("patterns"), freeze.strings("types")
    transferred = freeze.take("transferred", bool, False)
    batchnorm = _choice(freeze, "batchnorm", BATCHNORM_POLICIES, "eval")
    mode = _choice(freeze, "mode", FREEZE_MODES, "requires_grad")
    freeze.no_other_keys()
    _check_patterns(freeze, "patterns", frozen)
    optimizer = root.table("optimizer")
    lr = _positive(optimizer, "lr")
    weight_decay = _positive(optimizer, "weight_decay", allow_zero=True)
    no_decay = optimizer.take("no_weight_decay_norm_bias", bool, True)
    layer_decay = _positive(optimizer, "layer_decay")
    if layer_decay is not None and layer_decay > 1:
        raise optimizer.error(f"expected a factor in (0, 1], got {layer_decay}", "layer_decay")
    groups = tuple(_group(table) for table in optimizer.tables("groups"))
    optimizer.no_other_keys()
    _unique_group_names(optimizer, groups)
    stages = tuple(_stage(table, groups) for table in root.tables("unfreeze"))
    return FreezeOptions(frozen, types, transferred, batchnorm, mode, tuple(sorted(stages, key=lambda s: s.epoch)),
                         lr, weight_decay, groups, layer_decay, no_decay)


def _choice(table: Table, key: str, choices: tuple[str, ...], default: str) -> str:
    value: str = table.take(key, str, default)
    if value not in choices:
        raise table.error(f"expected one of {', '.join(choices)}, got {value!r}", key)
    return value


def _positive(table: Table, key: str, *, allow_zero: bool = False) -> float | None:
    value: float | None = table.take(key, float)
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise table.error(f"expected a {'non-negative' if allow_zero else 'positive'} number, got {value}", key)
    return value


def _check_patterns(table: Table, key: str, values: tuple[str, ...]) -> None:
    for pattern in values:
        _checked(table, key, partial(_compile, pattern))


def _group(table: Table) -> GroupRule:
    name = table.take("name", str, required=True)
    selected = table.strings("patterns")
    if not selected:
        raise table.error("a group needs at least one pattern", "patterns")
    lr_scale = _positive(table, "lr_scale", allow_zero=True)
    weight_decay = _positive(table, "weight_decay", allow_zero=True)
    table.no_other_keys()
    _check_patterns(table, "patterns", selected)
    return GroupRule(name, selected, 1.0 if lr_scale is None else lr_scale, weight_decay)


def _unique_group_names(table: Table, groups: tuple[GroupRule, ...]) -> None:
    seen: set[str] = set()
    for group in groups:
        if group.name == DEFAULT_GROUP or group.name in seen:
            why = "is the group of everything no pattern selects" if group.name == DEFAULT_GROUP else "is used twice"
            raise table.error(f"group name {group.name!r} {why}; give each group its own name", "groups")
        seen.add(group.name)


def _stage(table: Table, groups: tuple[GroupRule, ...]) -> UnfreezeStage:
    epoch = table.take("epoch", int, required=True)
    if epoch < 0:
        raise table.error(f"expected an epoch >= 0, got {epoch}", "epoch")
    selected = table.strings("patterns")
    if not selected:
        raise table.error("a stage needs at least one pattern", "patterns")
    group = table.take("group", str)
    if group is not None and group not in {g.name for g in groups} | {DEFAULT_GROUP}:
        raise table.error(f"no [[optimizer.groups]] is named {group!r}", "group")
    table.no_other_keys()
    _check_patterns(table, "patterns", selected)
    return UnfreezeStage(epoch, selected, group)
