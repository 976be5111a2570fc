"""What is frozen, how BatchNorm behaves and which optimizer groups would be built, as data for a CLI.

:func:`describe_model` reads a live model (and its :class:`~.schedule.FineTune`, when there is one);
:func:`describe_keys` predicts the same from a checkpoint's (name, shape) keys and the options alone, for
``freeze --target CKPT``. Without a model, module types are unknown (a type rule naming a BatchNorm class
selects every layer with ``running_mean`` and ``running_var`` keys; other type rules select nothing), and
every key that is not a BatchNorm statistic or counter is taken for a parameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from torch import nn

from ..options import FreezeOptions
from ..report_render import ROOT
from .batchnorm import TRAIN, BatchNormState, batchnorm_layers_from_keys, batchnorm_states, governing_names
from .freeze import select_transferred
from .groups import GroupSpec, plan_groups
from .schedule import schedule_groups, stage_names
from .selection import TYPE, Selection, parameter_shapes, select_by_patterns, selected_names

if TYPE_CHECKING:
    from ..report import Report
    from .schedule import FineTune

BUFFER_LEAVES = frozenset({"running_mean", "running_var", "num_batches_tracked"})


@dataclass(frozen=True)
class ModuleCounts:
    """Trainable and frozen parameters (tensors and elements) under one module."""

    module: str
    trainable: int
    frozen: int
    trainable_numel: int
    frozen_numel: int


@dataclass(frozen=True)
class GroupSummary:
    """One optimizer group that would be built; ``lr`` is None when no base lr is known."""

    name: str
    count: int
    numel: int
    lr: float | None
    weight_decay: float | None
    lr_scale: float
    frozen: bool


@dataclass(frozen=True)
class FreezeState:
    """Per module counts, BatchNorm modes, optimizer groups, the rules' selections and notes."""

    modules: tuple[ModuleCounts, ...]
    batchnorm: tuple[BatchNormState, ...]
    groups: tuple[GroupSummary, ...]
    selections: tuple[Selection, ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["selections"] = [{"rule": s.rule, "kind": s.kind, "count": s.count} for s in self.selections]
        return data


def describe_model(model: nn.Module, options: FreezeOptions | None = None, *, finetune: FineTune | None = None,
                   depth: int = 1, lr: float | None = None, weight_decay: float | None = None) -> FreezeState:
    """The model as it is now: frozen means ``requires_grad`` off, or in ``finetune``'s frozen set.

    Args:
        depth: how many name components make a module row (1: top-level modules).
        lr, weight_decay: base values over the options' (the groups' lr is None when none is known).
    """
    options = finetune.options if finetune is not None else (options or FreezeOptions())
    listing = parameter_shapes(model)
    params = dict(model.named_parameters())
    if finetune is not None:
        frozen = set(finetune.frozen_names) | {name for name, _ in listing if name not in params}
        specs = finetune.group_specs()
    else:
        frozen = {name for name, _ in listing if name not in params or not params[name].requires_grad}
        specs = plan_groups(listing, options, include=params.keys(), frozen=frozen)
    shapes = dict(listing)
    return FreezeState(count_modules(listing, frozen, depth), batchnorm_states(model, frozen),
                       summarize_groups(specs, shapes, options, lr, weight_decay),
                       finetune.start().freeze.selections if finetune is not None else ())


def describe_keys(keys: Iterable[tuple[str, Sequence[int]]], options: FreezeOptions, *, epoch: int = 0,
                  depth: int = 1, lr: float | None = None, weight_decay: float | None = None,
                  report: Report | None = None) -> FreezeState:
    """What ``options`` would freeze at ``epoch`` (its stages up to it applied) in a model with these keys."""
    shapes = [(name, tuple(shape)) for name, shape in keys]
    listing = [(name, shape) for name, shape in shapes if name.rpartition(".")[2] not in BUFFER_LEAVES]
    names = [name for name, _ in listing]
    layers = batchnorm_layers_from_keys(name for name, _ in shapes)
    selections = select_by_patterns(names, options.freeze, "freeze")
    selections += [_type_selection(rule, layers, names) for rule in options.freeze_types]
    notes = [f"module type {rule!r} is unknown without a model: it selects nothing here"
             for rule in options.freeze_types if "BatchNorm" not in rule]
    if options.freeze_transferred:
        if report is None:
            notes.append("freeze_transferred needs the transfer's report: nothing selected for it here")
        else:
            selections.append(select_transferred(names, report))
    frozen_at_start = selected_names(selections)
    stages = stage_names(names, frozen_at_start, options.unfreeze)
    applied = {index for index, stage in enumerate(options.unfreeze) if stage.epoch <= epoch}
    frozen = frozen_at_start - {name for index in applied for name in stages[index][1]}
    specs = schedule_groups(listing, options, frozen_at_start, [n for _, n in stages], applied)
    return FreezeState(count_modules(listing, frozen, depth), _predicted_modes(layers, names, frozen, options),
                       summarize_groups(specs, dict(listing), options, lr, weight_decay),
                       tuple(selections), tuple(notes))


def count_modules(listing: Sequence[tuple[str, tuple[int, ...]]], frozen: Iterable[str],
                  depth: int = 1) -> tuple[ModuleCounts, ...]:
    """Per module (the first ``depth`` components of the module path; ``<root>`` for top-level tensors)."""
    frozen = set(frozen)
    rows: dict[str, list[int]] = {}
    for name, shape in listing:
        module = name.rpartition(".")[0]
        key = ".".join(module.split(".")[:depth]) if module else ROOT
        row = rows.setdefault(key, [0, 0, 0, 0])
        slot = 1 if name in frozen else 0
        row[slot] += 1
        row[2 + slot] += math.prod(shape)
    return tuple(ModuleCounts(module, *row) for module, row in rows.items())


def summarize_groups(specs: Sequence[GroupSpec], shapes: dict[str, tuple[int, ...]], options: FreezeOptions,
                     lr: float | None, weight_decay: float | None) -> tuple[GroupSummary, ...]:
    """Name, size and values of each group; lr None when neither ``lr`` nor the options give a base lr."""
    base_lr = options.lr if lr is None else lr
    base_decay = options.weight_decay if weight_decay is None else weight_decay
    rows = []
    for spec in specs:
        values = spec.values(1.0 if base_lr is None else base_lr, 0.0 if base_decay is None else base_decay)
        numel = sum(math.prod(shapes[name]) for name in spec.names)
        rows.append(GroupSummary(spec.name, len(spec.names), numel, None if base_lr is None else values["lr"],
                                 values["weight_decay"], values["lr_scale"], spec.frozen))
    return tuple(rows)


def _type_selection(rule: str, layers: list[tuple[str, bool]], names: list[str]) -> Selection:
    if "BatchNorm" not in rule:
        return Selection(rule, TYPE, ())
    prefixes = tuple(f"{layer}." for layer, _ in layers)
    return Selection(rule, TYPE, tuple(name for name in names if prefixes and name.startswith(prefixes)))


def _predicted_modes(layers: list[tuple[str, bool]], names: list[str], frozen: set[str],
                     options: FreezeOptions) -> tuple[BatchNormState, ...]:
    states = []
    for layer, affine in layers:
        governing = governing_names(layer, affine, names)
        is_frozen = bool(governing) and all(name in frozen for name in governing)
        states.append(BatchNormState(layer, "BatchNorm", options.batchnorm if is_frozen else TRAIN, is_frozen))
    return tuple(states)
