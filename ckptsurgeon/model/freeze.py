"""Freezing and unfreezing parameters by name pattern, module type, or what a transfer loaded unchanged.

Freezing goes through ``Parameter.requires_grad_`` on each selected parameter: setting ``module.requires_grad``
only adds an attribute to the module and freezes nothing. Which names a pattern or type selects is explained
in :mod:`.selection`. A rule that selects nothing is reported in :attr:`FreezeChange.unmatched`, not raised:
the caller decides whether that deserves a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from torch import nn

from ..plan import COPY
from .batchnorm import BatchNormState, restore_batchnorm
from .selection import (TRANSFERRED, ModuleType, Selection, parameter_shapes, select_by_patterns,
                        select_by_types, selected_names)

if TYPE_CHECKING:
    from ..report import Report

FREEZE, UNFREEZE = "freeze", "unfreeze"


@dataclass(frozen=True)
class FreezeChange:
    """What a freeze or unfreeze did.

    Attributes:
        action: ``freeze`` or ``unfreeze``.
        changed: parameter names whose state changed, in model order.
        unchanged: names selected that were already in that state.
        selections: per rule (pattern, type, the transfer), what it selected.
        batchnorm: BatchNorm layers whose policy an unfreeze undid.
    """

    action: str
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]
    selections: tuple[Selection, ...]
    batchnorm: tuple[BatchNormState, ...] = ()

    @property
    def selected(self) -> tuple[str, ...]:
        return self.changed + self.unchanged

    @property
    def unmatched(self) -> tuple[str, ...]:
        """Rules that selected nothing (a typo, or a model without that module)."""
        return tuple(selection.rule for selection in self.selections if not selection.names)

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "changed": list(self.changed), "unchanged": list(self.unchanged),
                "selections": [{"rule": s.rule, "kind": s.kind, "count": s.count} for s in self.selections],
                "unmatched": list(self.unmatched),
                "batchnorm": [{"name": s.name, "type": s.type, "mode": s.mode} for s in self.batchnorm]}


def freeze(model: nn.Module, patterns: Iterable[str] = (), *, types: Iterable[ModuleType] = (),
           report: Report | None = None) -> FreezeChange:
    """Turn ``requires_grad`` off for the parameters the rules select.

    Args:
        patterns: parameter or module name patterns (globs, or ``re:REGEX``).
        types: module classes or class names (``"BatchNorm2d"``).
        report: a transfer's report: freeze what it loaded unchanged (``copy`` steps); new and resized
            tensors stay trainable.
    Returns:
        what changed; BatchNorm layers are untouched (see :func:`.batchnorm.apply_batchnorm_policy`).
    """
    selections = select_parameters(model, patterns, types=types, report=report)
    return set_trainable(model, _ordered(model, selected_names(selections)), False, selections)


def unfreeze(model: nn.Module, patterns: Iterable[str] = (), *, types: Iterable[ModuleType] = ()) -> FreezeChange:
    """Turn ``requires_grad`` on for the parameters the rules select, and undo the BatchNorm policy of the
    layers they govern (a FrozenBatchNorm becomes a trainable layer of its original class again)."""
    selections = select_parameters(model, patterns, types=types)
    return set_trainable(model, _ordered(model, selected_names(selections)), True, selections)


def select_parameters(model: nn.Module, patterns: Iterable[str] = (), *, types: Iterable[ModuleType] = (),
                      report: Report | None = None) -> list[Selection]:
    """What each rule selects among the model's parameters (FrozenBatchNorm weights included), changing
    nothing."""
    names = [name for name, _ in parameter_shapes(model)]
    selections = select_by_patterns(names, patterns, "freeze") + select_by_types(model, names, types)
    if report is not None:
        selections.append(select_transferred(names, report))
    return selections


def select_transferred(names: Iterable[str], report: Report) -> Selection:
    """The names a transfer loaded unchanged: its ``copy`` steps (not ``resize``, not ``init``)."""
    copied = {step.target for step in report.plan.steps if step.action == COPY}
    return Selection("transferred", TRANSFERRED, tuple(name for name in names if name in copied))


def set_trainable(model: nn.Module, names: Iterable[str], trainable: bool,
                  selections: Iterable[Selection] = ()) -> FreezeChange:
    """Set ``requires_grad`` of exactly ``names``; making them trainable first undoes the BatchNorm policy
    of the layers they govern (a FrozenBatchNorm's weight counts as frozen until then)."""
    names = list(names)
    before = _trainable_names(model)
    restored = restore_batchnorm(model, set(names)) if trainable else ()
    params = dict(model.named_parameters())
    for name in names:
        if name in params:
            params[name].requires_grad_(trainable)
    changed = tuple(name for name in names if (name in before) != trainable)
    unchanged = tuple(name for name in names if (name in before) == trainable)
    return FreezeChange(UNFREEZE if trainable else FREEZE, changed, unchanged, tuple(selections), restored)


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _ordered(model: nn.Module, names: set[str]) -> list[str]:
    return [name for name, _ in parameter_shapes(model) if name in names]
