r"""Optimizer parameter groups, computed as data (:class:`GroupSpec`) before any optimizer exists.

Rules, in the order they apply to each parameter:

- **group**: the first :class:`~ckptsurgeon.options.GroupRule` with a pattern selecting it (see
  :mod:`.selection`), else ``default``; its ``lr_scale`` and ``weight_decay`` apply.
- **layer decay** (``layer_decay``): a parameter's depth is the first numbered module in its name:
  ``blocks.N``, ``layers.N``, ``layer.N``, ``stages.N`` give ``N + 1``; ``layerN`` (ResNet, counted from 1)
  gives ``N``. Unnumbered parameters registered before the first numbered one (stem, embeddings) get depth 0,
  those after it (final norm, head) the deepest block's + 1. The lr scale is multiplied by
  ``layer_decay ** (head_depth - depth)``: the head trains at the full lr, each block towards the input
  at one more factor less. One numbered stack per model is assumed.
- **no decay** (``no_weight_decay_norm_bias``): 1-D parameters (norm weights, biases) and ``*.bias`` get
  weight decay 0, in a group of their own.
- **frozen** parameters are left out, or, with ``mode="lr_zero"`` (DDP), put in ``frozen/...`` groups with
  lr 0, ``lr_scale`` 0 and weight decay 0 (``requires_grad`` stays on: DDP expects the same parameters to
  need gradients on every step).

Groups are named ``RULE[/depthD][/no_decay]`` (``backbone``, ``backbone/no_decay``, ``default/depth3``),
listed in the order their first parameter is registered, and never empty. Each dict carries ``name``,
``lr``, ``weight_decay`` and ``lr_scale`` (which timm's schedulers multiply their lr by).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Collection, Sequence

from torch import nn

from ..errors import OptionError
from ..match.rules import compile_pattern
from ..options import FreezeOptions
from ..options import DEFAULT_GROUP
from .selection import enclosing_names, parameter_shapes

FROZEN_GROUP = "frozen"
NO_DECAY = "no_decay"
LR_ZERO = "lr_zero"

_NUMBERED = re.compile(r"(?:^|\.)(?:(?:blocks|layers|layer|stages)\.(\d+)|layer(\d+))(?:\.|$)")

Shapes = Sequence[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class GroupSpec:
    """One optimizer group as data. ``lr_scale`` is the trainable scale (rule times layer decay) even for a
    frozen group, whose materialised lr and scale are 0 until it is unfrozen."""

    name: str
    names: tuple[str, ...]
    lr_scale: float
    weight_decay: float | None     # None: the base weight decay
    no_decay: bool = False
    frozen: bool = False

    def values(self, base_lr: float, base_weight_decay: float) -> dict[str, Any]:
        """``name``, ``lr``, ``weight_decay`` and ``lr_scale`` as the optimizer group gets them."""
        if self.frozen:
            return {"name": self.name, "lr": 0.0, "weight_decay": 0.0, "lr_scale": 0.0}
        decay = 0.0 if self.no_decay else (base_weight_decay if self.weight_decay is None else self.weight_decay)
        return {"name": self.name, "lr": base_lr * self.lr_scale, "weight_decay": decay, "lr_scale": self.lr_scale}


def param_groups(model: nn.Module, options: FreezeOptions | None = None, *, lr: float | None = None,
                 weight_decay: float | None = None, frozen: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` (rules in the module docstring).

    Args:
        options: groups, layer decay, no-decay switch, mode and base values.
        lr, weight_decay: base values over ``options.lr`` / ``options.weight_decay``.
        frozen: the names that count as frozen; default those with ``requires_grad`` off.
    """
    options = options or FreezeOptions()
    listing = parameter_shapes(model)
    params = dict(model.named_parameters())
    if frozen is None:
        frozen = {name for name, param in params.items() if not param.requires_grad}
    specs = plan_groups(listing, options, include=params.keys(), frozen=frozen)
    base_lr, base_decay = base_values(options, lr, weight_decay)
    return [materialize(spec, params, base_lr, base_decay) for spec in specs]


def plan_groups(listing: Shapes, options: FreezeOptions, *, include: Collection[str] | None = None,
                frozen: Collection[str] = (), group: str | None = None, suffix: str = "") -> list[GroupSpec]:
    """Groups of the names in ``include`` (default all of ``listing``), as data.

    Args:
        listing: (name, shape) of every parameter in model order (depths are counted over all of it).
        frozen: names left out, or in ``lr_zero`` mode grouped as frozen.
        group: a rule name every included parameter goes to (an unfreeze stage's ``group``).
        suffix: appended to each group name (``@50`` for the parameters an epoch-50 stage adds).
    """
    rule_of = _rule_finder(options, group)
    depths = layer_depths([name for name, _ in listing]) if options.layer_decay is not None else {}
    deepest = max(depths.values(), default=0)
    members: dict[tuple[str, int | None, bool, bool], list[str]] = {}
    for name, shape in listing:
        if include is not None and name not in include:
            continue
        is_frozen = name in frozen
        if is_frozen and options.mode != LR_ZERO:
            continue
        no_decay = options.no_weight_decay_norm_bias and (len(shape) <= 1 or name.endswith(".bias"))
        members.setdefault((rule_of(name), depths.get(name), no_decay, is_frozen), []).append(name)
    return [_spec(key, names, options, deepest, suffix) for key, names in members.items()]


def layer_depths(names: Sequence[str]) -> dict[str, int]:
    """Each name's block depth under the rule in the module docstring."""
    numbered = {name: _numbered_depth(name) for name in names}
    deepest = max((depth for depth in numbered.values() if depth is not None), default=0)
    depths, seen_block = {}, False
    for name in names:
        depth = numbered[name]
        seen_block = seen_block or depth is not None
        depths[name] = depth if depth is not None else (deepest + 1 if seen_block else 0)
    return depths


def base_values(options: FreezeOptions, lr: float | None, weight_decay: float | None) -> tuple[float, float]:
    """The base lr (required: every group states its lr) and weight decay (default 0)."""
    base_lr = options.lr if lr is None else lr
    if base_lr is None:
        raise OptionError("parameter groups need a base learning rate: set [optimizer] lr in the recipe, "
                          "FreezeOptions(lr=...), or pass lr=...")
    decay = options.weight_decay if weight_decay is None else weight_decay
    return base_lr, 0.0 if decay is None else decay


def materialize(spec: GroupSpec, params: dict[str, nn.Parameter], base_lr: float,
                base_weight_decay: float) -> dict[str, Any]:
    """The optimizer group of ``spec``: its parameters (looked up by name) and its values."""
    return {"params": [params[name] for name in spec.names], **spec.values(base_lr, base_weight_decay)}


def _spec(key: tuple[str, int | None, bool, bool], names: list[str], options: FreezeOptions, deepest: int,
          suffix: str) -> GroupSpec:
    rule_name, depth, no_decay, is_frozen = key
    rule = next((rule for rule in options.groups if rule.name == rule_name), None)
    scale = rule.lr_scale if rule is not None else 1.0
    parts = [rule_name]
    if depth is not None and options.layer_decay is not None:
        scale *= options.layer_decay ** (deepest - depth)
        parts.append(f"depth{depth}")
    if no_decay:
        parts.append(NO_DECAY)
    if is_frozen:
        parts.insert(0, FROZEN_GROUP)
    return GroupSpec("/".join(parts) + suffix, tuple(names), scale, rule.weight_decay if rule else None,
                     no_decay, is_frozen)


def _rule_finder(options: FreezeOptions, forced: str | None) -> Callable[[str], str]:
    if forced is not None:
        known = {rule.name for rule in options.groups} | {DEFAULT_GROUP}
        if forced not in known:
            raise OptionError(f"unfreeze stage group {forced!r}: no optimizer group has that name; "
                              f"name one of {', '.join(sorted(known))}")
        return lambda name: forced
    rules = [(rule.name, [compile_pattern(p, f"group {rule.name!r} pattern") for p in rule.patterns])
             for rule in options.groups]

    def rule_of(name: str) -> str:
        candidates = enclosing_names(name)
        for rule_name, matchers in rules:
            if any(matches(c) for matches in matchers for c in candidates):
                return rule_name
        return DEFAULT_GROUP
    return rule_of


def _numbered_depth(name: str) -> int | None:
    found = _NUMBERED.search(name)
    if found is None:
        return None
    return int(found.group(1)) + 1 if found.group(1) is not None else int(found.group(2))
