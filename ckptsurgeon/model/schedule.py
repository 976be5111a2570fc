"""The fine-tuning driver: freeze at the start, unfreeze on schedule, keep the optimizer in step, resume.

The order in a training script, the same for a fresh run and a resumed one::

    model = build()                                  # 1. the model (and the transfer into it)
    ft = FineTune(model, recipe.freeze, report=report)
    ft.start()                                       # 2. initial freeze + BatchNorm policy (before DDP wraps)
    if resuming:
        ft.load_state_dict(saved["finetune"])        # 3. replays the stages already applied
    opt = torch.optim.SGD(ft.param_groups(), momentum=0.9)   # 4. groups for the current trainable set
    if resuming:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])      # 5. same group count, order and names as when saved
    for epoch in range(start_epoch, epochs):
        ft.on_epoch_start(epoch, opt)                # 6. stages due by this epoch, each once
        train_one_epoch(...)
        save({"model": ..., "optimizer": opt.state_dict(), "finetune": ft.state_dict()})

What each stage unfreezes is fixed at :meth:`FineTune.start`: the names its patterns select among those
still frozen after the stages before it. With ``mode="requires_grad"`` they join the optimizer as new groups
named ``GROUP@EPOCH`` (``backbone@50``, ``backbone/no_decay@50``) starting at base lr x ``lr_scale``. With
``mode="lr_zero"`` (DDP) every parameter is in the optimizer from the start: a stage's groups carry the same
names with lr 0 until their epoch, when their lr comes back and the optimizer state (momentum, Adam moments)
gathered at lr 0 is dropped, so that both modes train alike; ``frozen/...`` groups hold what no stage
unfreezes. An lr scheduler
built before a stage does not know the groups it adds; one that sets every group's lr from ``lr_scale``
each step (timm's do) follows them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Collection, Sequence

import torch
from torch import nn

from ..errors import OptionError
from ..options import FreezeOptions, UnfreezeStage
from .batchnorm import FROZEN, BatchNormState, apply_batchnorm_policy, held_by, restore_batchnorm
from .freeze import FREEZE, UNFREEZE, FreezeChange, select_parameters, set_trainable
from .groups import LR_ZERO, GroupSpec, Shapes, base_values, materialize, plan_groups
from .selection import Selection, parameter_shapes, select_by_patterns, selected_names

if TYPE_CHECKING:
    from ..report import Report

STATE_FORMAT = "ckptsurgeon.finetune/1"


@dataclass(frozen=True)
class StageChange:
    """What :meth:`FineTune.start` (``epoch`` None) or one unfreeze stage did: the freeze change, the
    BatchNorm layers it set or restored, and the optimizer groups it added (or gave their lr back)."""

    epoch: int | None
    freeze: FreezeChange
    batchnorm: tuple[BatchNormState, ...]
    groups: tuple[str, ...] = ()


def stage_names(names: Sequence[str], frozen: Collection[str],
                stages: Sequence[UnfreezeStage]) -> list[tuple[list[Selection], tuple[str, ...]]]:
    """Per stage, what its patterns select and the names it unfreezes: those still frozen before it."""
    remaining = set(frozen)
    plan = []
    for stage in stages:
        selections = select_by_patterns(names, stage.patterns, "unfreeze")
        chosen = selected_names(selections)
        unfrozen = tuple(name for name in names if name in chosen and name in remaining)
        remaining.difference_update(unfrozen)
        plan.append((selections, unfrozen))
    return plan


def schedule_groups(listing: Shapes, options: FreezeOptions, frozen_at_start: Collection[str],
                    unfrozen: Sequence[tuple[str, ...]], applied: Collection[int], *,
                    present: Collection[str] | None = None) -> list[GroupSpec]:
    """The optimizer's groups, in order, once the stages in ``applied`` have run (see the module docstring).
    ``present``: the names that are parameters now (a FrozenBatchNorm's weight is not)."""
    names = [name for name, _ in listing if present is None or name in present]
    lr_zero = options.mode == LR_ZERO
    specs = plan_groups(listing, options, include={n for n in names if n not in frozen_at_start})
    for index, (stage, stage_set) in enumerate(zip(options.unfreeze, unfrozen)):
        if index in applied or lr_zero:
            stage_specs = plan_groups(listing, options, include=set(stage_set), group=stage.group,
                                      suffix=_suffix(options.unfreeze, index))
            specs += [spec if index in applied else replace(spec, frozen=True) for spec in stage_specs]
    if lr_zero:
        staged = {name for stage_set in unfrozen for name in stage_set}
        rest = {name for name in names if name in frozen_at_start and name not in staged}
        specs += plan_groups(listing, options, include=rest, frozen=rest)
    return specs


class FineTune:
    """Freezing, BatchNorm policy, parameter groups and the unfreeze schedule of one training run.

    Args:
        model: the model, after the transfer and before DDP wraps it.
        options: what to freeze and when to unfreeze it (a recipe's ``freeze``).
        report: the transfer's report, needed when ``options.freeze_transferred``.
        lr, weight_decay: base values over ``options.lr`` / ``options.weight_decay``.
    """

    def __init__(self, model: nn.Module, options: FreezeOptions | None = None, *, report: Report | None = None,
                 lr: float | None = None, weight_decay: float | None = None) -> None:
        self.model = model
        self.options = options or FreezeOptions()
        if self.options.freeze_transferred and report is None:
            raise OptionError("freeze_transferred freezes what the transfer loaded unchanged: pass its report, "
                              "FineTune(model, options, report=report)")
        self.report = report
        self.lr, self.weight_decay = lr, weight_decay
        self._started: StageChange | None = None
        self._frozen_at_start: frozenset[str] = frozenset()
        self._stages: list[tuple[list[Selection], tuple[str, ...]]] = []
        self._applied: set[int] = set()

    def start(self) -> StageChange:
        """Apply the initial freeze and the BatchNorm policy (once; later calls return the first result)."""
        if self._started is not None:
            return self._started
        options, lr_zero = self.options, self.options.mode == LR_ZERO
        selections = select_parameters(self.model, options.freeze, types=options.freeze_types,
                                       report=self.report if options.freeze_transferred else None)
        names = [name for name, _ in parameter_shapes(self.model)]
        chosen = selected_names(selections)
        ordered = [name for name in names if name in chosen]
        if lr_zero:
            change = FreezeChange(FREEZE, tuple(ordered), (), tuple(selections))
            self._frozen_at_start = frozenset(ordered)
        else:
            change = set_trainable(self.model, ordered, False, selections)
            trainable = {name for name, param in self.model.named_parameters() if param.requires_grad}
            self._frozen_at_start = frozenset(name for name in names if name not in trainable)
        self._stages = stage_names(names, self._frozen_at_start, options.unfreeze)
        states = apply_batchnorm_policy(self.model, options.batchnorm,
                                        frozen=self._frozen_at_start if lr_zero else None)
        if lr_zero:
            self._refuse_swapped_unfreeze()
        self._started = StageChange(None, change, states)
        return self._started

    @property
    def frozen_names(self) -> frozenset[str]:
        """The parameter names frozen now (by this run: the start minus the stages applied)."""
        unfrozen = {name for index in self._applied for name in self._stages[index][1]}
        return self._frozen_at_start - unfrozen

    def group_specs(self) -> list[GroupSpec]:
        """The optimizer's groups as data, in order, for the stages applied so far."""
        self.start()
        present = {name for name, _ in self.model.named_parameters()}
        return schedule_groups(parameter_shapes(self.model), self.options, self._frozen_at_start,
                               [names for _, names in self._stages], self._applied, present=present)

    def param_groups(self) -> list[dict[str, Any]]:
        """Groups for ``torch.optim`` for the current trainable set (calls :meth:`start` if needed)."""
        params = dict(self.model.named_parameters())
        base_lr, base_decay = base_values(self.options, self.lr, self.weight_decay)
        return [materialize(spec, params, base_lr, base_decay) for spec in self.group_specs()]

    def on_epoch_start(self, epoch: int, optimizer: torch.optim.Optimizer | None) -> list[StageChange]:
        """Apply every stage due by ``epoch`` not applied yet (a skipped epoch's too), each exactly once, and
        bring ``optimizer`` in step (None: the model only, e.g. to describe the state at an epoch)."""
        self.start()
        due = [index for index, stage in enumerate(self.options.unfreeze)
               if stage.epoch <= epoch and index not in self._applied]
        return [self._apply(index, optimizer) for index in due]

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the schedule, which stages ran, and the optimizer's group names in order."""
        return {"format": STATE_FORMAT, "mode": self.options.mode,
                "stages": [{**_stage_dict(stage), "applied": index in self._applied}
                           for index, stage in enumerate(self.options.unfreeze)],
                "groups": [spec.name for spec in self.group_specs()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay the stages a saved run had applied, so that :meth:`param_groups` gives the groups its
        optimizer had. Call it after :meth:`start` (it starts if needed) and before building the optimizer."""
        self.start()
        self._check_compatible(state)
        for index, entry in enumerate(state["stages"]):
            if index in self._applied and not entry["applied"]:
                raise OptionError(f"the unfreeze stage of epoch {entry['epoch']} already ran here but not in the "
                                  f"saved run, and resuming never freezes again: load the state into a fresh "
                                  f"FineTune, before on_epoch_start")
            if entry["applied"] and index not in self._applied:
                self._apply(index, None)
        groups = [spec.name for spec in self.group_specs()]
        if groups != list(state["groups"]):
            raise OptionError(f"the optimizer groups would be {groups} but the saved run had {state['groups']}: "
                              f"build the model, the transfer and FineTune as the saved run did")

    def _apply(self, index: int, optimizer: torch.optim.Optimizer | None) -> StageChange:
        stage = self.options.unfreeze[index]
        selections, names = self._stages[index]
        if self.options.mode == LR_ZERO:
            change = FreezeChange(UNFREEZE, names, (), tuple(selections), restore_batchnorm(self.model, names))
        else:
            change = set_trainable(self.model, names, True, selections)
        self._applied.add(index)
        specs = plan_groups(parameter_shapes(self.model), self.options, include=set(names), group=stage.group,
                            suffix=_suffix(self.options.unfreeze, index))
        groups: list[str] = []
        if optimizer is not None:
            groups = self._give_lr(optimizer, specs) if self.options.mode == LR_ZERO else self._add(optimizer, specs)
        return StageChange(stage.epoch, change, change.batchnorm, tuple(groups))

    def _add(self, optimizer: torch.optim.Optimizer, specs: list[GroupSpec]) -> list[str]:
        present = {id(param) for group in optimizer.param_groups for param in group["params"]}
        params = dict(self.model.named_parameters())
        base_lr, base_decay = base_values(self.options, self.lr, self.weight_decay)
        added = []
        for spec in specs:
            fresh = [params[name] for name in spec.names if id(params[name]) not in present]
            if fresh:   # a parameter already in the optimizer never joins twice
                optimizer.add_param_group({"params": fresh, **spec.values(base_lr, base_decay)})
                added.append(spec.name)
        return added

    def _give_lr(self, optimizer: torch.optim.Optimizer, specs: list[GroupSpec]) -> list[str]:
        by_name = {group.get("name"): group for group in optimizer.param_groups}
        base_lr, base_decay = base_values(self.options, self.lr, self.weight_decay)
        for spec in specs:
            if spec.name not in by_name:
                raise OptionError(f"the optimizer has no group {spec.name!r} to give its lr back to: in lr_zero "
                                  f"mode build the optimizer from FineTune.param_groups()")
            group = by_name[spec.name]
            group.update(spec.values(base_lr, base_decay))
            for param in group["params"]:   # momentum gathered at lr 0 is dropped: as if the group joined now
                optimizer.state.pop(param, None)
        return [spec.name for spec in specs]

    def _refuse_swapped_unfreeze(self) -> None:
        for stage, (_, names) in zip(self.options.unfreeze, self._stages):
            swapped = [state.name for state in held_by(self.model, set(names)) if state.mode == FROZEN]
            if swapped:
                raise OptionError(f"the unfreeze stage of epoch {stage.epoch} would turn the FrozenBatchNorm "
                                  f"{swapped[0]!r} back into a BatchNorm with new parameters, which lr_zero mode "
                                  f"(DDP) cannot add; use batchnorm='eval' with mode='lr_zero'")

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise OptionError(f"not a FineTune state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        mine = [_stage_dict(stage) for stage in self.options.unfreeze]
        saved = [{key: entry[key] for key in ("epoch", "patterns", "group")} for entry in state["stages"]]
        if saved != mine or state.get("mode") != self.options.mode:
            raise OptionError(f"the saved run's schedule ({state.get('mode')}, {saved}) differs from these options' "
                              f"({self.options.mode}, {mine}): resume with the options the run started with")


def _stage_dict(stage: UnfreezeStage) -> dict[str, Any]:
    return {"epoch": stage.epoch, "patterns": list(stage.patterns), "group": stage.group}


def _suffix(stages: Sequence[UnfreezeStage], index: int) -> str:
    epoch = stages[index].epoch
    sharing = [i for i, stage in enumerate(stages) if stage.epoch == epoch]
    return f"@{epoch}" if len(sharing) == 1 else f"@{epoch}.{sharing.index(index) + 1}"
