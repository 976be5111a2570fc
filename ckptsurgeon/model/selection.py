r"""Which parameters a pattern or a module type selects, for freeze, unfreeze and parameter groups.

A pattern (a glob matched against the whole name, or ``re:REGEX`` searched in it, as everywhere in
ckptsurgeon) selects a parameter when it matches the parameter's full name or the name of any module
containing it: ``backbone``, ``backbone.*`` and ``re:^backbone\.`` all select ``backbone.stem.conv.weight``;
``layer4`` selects ``layer4.0.conv1.weight``. A module type (a class, or a class name such as
``BatchNorm2d`` compared with every class the module derives from) selects the parameters of each module of
that type and of the modules inside it.

Patterns work on names alone, so a checkpoint's keys can be selected without a live model. The live listing
(:func:`parameter_shapes`) counts a :class:`~.frozen_bn.FrozenBatchNorm`'s ``weight`` and ``bias`` as the
parameters they stand for, so that a swapped layer can still be selected (and unfrozen) by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from torch import nn

from ..match.rules import compile_pattern
from .frozen_bn import FrozenBatchNorm

PATTERN, TYPE, TRANSFERRED = "pattern", "type", "transferred"   # Selection kinds

ModuleType = Union[str, type[nn.Module]]


@dataclass(frozen=True)
class Selection:
    """What one rule selected: the rule as written, its kind (pattern, type, transferred), the names."""

    rule: str
    kind: str
    names: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.names)


def enclosing_names(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b", "a.b.c"]``: the name and every module around it."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def pattern_selects(pattern: str, name: str, label: str = "pattern") -> bool:
    """Whether ``pattern`` selects the parameter ``name`` (its own name or an enclosing module's)."""
    matches = compile_pattern(pattern, label)
    return any(matches(candidate) for candidate in enclosing_names(name))


def select_by_patterns(names: Sequence[str], patterns: Iterable[str], label: str = "pattern") -> list[Selection]:
    """One :class:`Selection` per pattern, its names in the order of ``names``."""
    selections = []
    for pattern in patterns:
        matches = compile_pattern(pattern, label)
        chosen = tuple(name for name in names if any(matches(c) for c in enclosing_names(name)))
        selections.append(Selection(pattern, PATTERN, chosen))
    return selections


def select_by_types(model: nn.Module, names: Sequence[str], types: Iterable[ModuleType]) -> list[Selection]:
    """One :class:`Selection` per module type: the names under every module of that type."""
    modules = list(model.named_modules())
    selections = []
    for wanted in types:
        label = wanted if isinstance(wanted, str) else wanted.__name__
        prefixes = tuple(f"{path}." if path else "" for path, module in modules if _is_type(module, wanted))
        chosen = tuple(name for name in names if prefixes and name.startswith(prefixes))
        selections.append(Selection(label, TYPE, chosen))
    return selections


def selected_names(selections: Iterable[Selection]) -> set[str]:
    return {name for selection in selections for name in selection.names}


def parameter_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter in ``named_parameters`` order, shared ones once, with a
    FrozenBatchNorm's ``weight`` and ``bias`` where its BatchNorm's parameters were."""
    seen: set[int] = set()
    listing = []
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, FrozenBatchNorm):
            local = [(leaf, module.get_buffer(leaf)) for leaf in ("weight", "bias") if module.affine]
        else:
            local = [(leaf, param) for leaf, param in module.named_parameters(recurse=False)]
        for leaf, tensor in local:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                listing.append((prefix + leaf, tuple(tensor.shape)))
    return listing


def _is_type(module: nn.Module, wanted: ModuleType) -> bool:
    classes: tuple[type, ...] = type(module).__mro__
    if isinstance(module, FrozenBatchNorm):
        classes += module.original_type.__mro__
    if isinstance(wanted, str):
        return any(cls.__name__ == wanted for cls in classes)
    return wanted in classes
