"""What frozen BatchNorm layers do in training: the ``eval | frozen | train`` policy.

``requires_grad=False`` stops a BatchNorm's weight and bias from training, but in ``model.train()`` the
layer still normalises with batch statistics and keeps updating its running mean and variance. The policy
applies to each BatchNorm layer (any ``_BatchNorm``, SyncBatchNorm included) whose *governing* parameters are
all frozen: its own weight and bias; for an affine-less layer, which has none, the parameters of the nearest
module around it that holds any (a frozen block freezes the statistics of its affine-less norms too).
Layers that track no running statistics have nothing to keep and are left alone.

- ``eval``: a forward pre-hook puts the layer in eval mode before every call, so ``model.train()`` (called
  each epoch) cannot undo it; removing the hook undoes it. (Right after ``model.train()`` the layer's
  ``training`` flag reads True until its next forward; what it computes is always eval mode.
  :func:`mode_of` tells the policy, not the flag.)
- ``frozen``: the layer is replaced by a :class:`~.frozen_bn.FrozenBatchNorm` (same state-dict keys); the
  way back builds a layer of the original class with new parameters (frozen until an unfreeze selects them).
- ``train``: the layer is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..options import BATCHNORM_POLICIES
from ..errors import OptionError
from .frozen_bn import STAT_KEYS, FrozenBatchNorm
from .selection import enclosing_names, parameter_shapes

EVAL, FROZEN, TRAIN = BATCHNORM_POLICIES


@dataclass(frozen=True)
class BatchNormState:
    """One BatchNorm layer: its name, its class (the original one for a FrozenBatchNorm), its mode
    (``eval``, ``frozen`` or ``train``) and whether its governing parameters are all frozen."""

    name: str
    type: str
    mode: str
    parameters_frozen: bool


def apply_batchnorm_policy(model: nn.Module, policy: str, *,
                           frozen: Collection[str] | None = None) -> tuple[BatchNormState, ...]:
    """Put every BatchNorm layer of ``model`` in the mode its parameters call for: ``policy`` where its
    governing parameters are all frozen, ``train`` elsewhere (which undoes an earlier policy).

    Args:
        policy: ``eval``, ``frozen`` or ``train``.
        frozen: the parameter names that count as frozen; default those with ``requires_grad`` off
            (``lr_zero`` fine-tuning passes its own set, as it keeps ``requires_grad`` on).
    Returns:
        each layer's resulting state, in model order.
    """
    if policy not in BATCHNORM_POLICIES:
        raise OptionError(f"BatchNorm policy {policy!r}: expected one of {', '.join(BATCHNORM_POLICIES)}")
    names = [name for name, _ in parameter_shapes(model)]
    frozen_names = _frozen_names(model) if frozen is None else frozen
    states = []
    for name, layer, governing in _governed_layers(model, names):
        is_frozen = bool(governing) and all(n in frozen_names for n in governing)
        target = policy if is_frozen and _has_statistics(layer) else TRAIN
        states.append(_state(name, _set_mode(model, name, layer, target), is_frozen))
    return tuple(states)


def restore_batchnorm(model: nn.Module, names: Collection[str]) -> tuple[BatchNormState, ...]:
    """Undo the policy (back to ``train``) of the layers governed by any of ``names``, as unfreezing them
    does. Returns the layers that changed."""
    return tuple(_state(name, _set_mode(model, name, layer, TRAIN), False)
                 for name, layer in _held_layers(model, names))


def held_by(model: nn.Module, names: Collection[str]) -> tuple[BatchNormState, ...]:
    """The layers under a policy (``eval`` or ``frozen``) that unfreezing ``names`` would restore."""
    return tuple(_state(name, layer, True) for name, layer in _held_layers(model, names))


def _held_layers(model: nn.Module, names: Collection[str]) -> list[tuple[str, nn.Module]]:
    listing = [name for name, _ in parameter_shapes(model)]
    return [(name, layer) for name, layer, governing in _governed_layers(model, listing)
            if mode_of(layer) != TRAIN and any(n in names for n in governing)]


def batchnorm_states(model: nn.Module, frozen: Collection[str] | None = None) -> tuple[BatchNormState, ...]:
    """The current state of every BatchNorm layer, changing nothing."""
    names = [name for name, _ in parameter_shapes(model)]
    frozen_names = _frozen_names(model) if frozen is None else frozen
    return tuple(_state(name, layer, bool(governing) and all(n in frozen_names for n in governing))
                 for name, layer, governing in _governed_layers(model, names))


def mode_of(layer: nn.Module) -> str:
    """``frozen`` for a FrozenBatchNorm, ``eval`` for a layer held in eval mode by the policy, else ``train``."""
    if isinstance(layer, FrozenBatchNorm):
        return FROZEN
    return EVAL if any(hook is _keep_eval for hook in layer._forward_pre_hooks.values()) else TRAIN


def governing_names(layer: str, affine: bool, names: Sequence[str]) -> list[str]:
    """The parameter names whose state decides a BatchNorm layer's mode (see the module docstring)."""
    if affine:
        own = {f"{layer}.weight", f"{layer}.bias"}
        return [name for name in names if name in own]
    for module in [*reversed(enclosing_names(layer)[:-1]), ""]:
        prefix = f"{module}." if module else ""
        inside = [name for name in names if name.startswith(prefix)]
        if inside:
            return inside
    return []


def batchnorm_layers_from_keys(keys: Iterable[str]) -> list[tuple[str, bool]]:
    """(layer name, affine) of the BatchNorm layers a checkpoint's keys show: a module with both
    ``running_mean`` and ``running_var``; affine when it also has a ``weight``."""
    by_module: dict[str, set[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        by_module.setdefault(module, set()).add(leaf)
    return [(module, "weight" in leaves) for module, leaves in by_module.items()
            if all(stat in leaves for stat in STAT_KEYS)]


def _keep_eval(module: nn.Module, args: object) -> None:
    module.training = False


def _governed_layers(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module, list[str]]]:
    return [(path, module, governing_names(path, bool(getattr(module, "affine", False)), names))
            for path, module in model.named_modules()
            if path and isinstance(module, (_BatchNorm, FrozenBatchNorm))]


def _set_mode(model: nn.Module, name: str, layer: nn.Module, mode: str) -> nn.Module:
    """Move ``layer`` from its current mode to ``mode``; returns the layer now at ``name``."""
    current = mode_of(layer)
    if current == mode:
        return layer
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if current == EVAL:
        for key in [k for k, hook in layer._forward_pre_hooks.items() if hook is _keep_eval]:
            del layer._forward_pre_hooks[key]
    elif isinstance(layer, FrozenBatchNorm):
        layer = layer.to_batchnorm().requires_grad_(False)   # still frozen: unfreezing turns on what it selects
        setattr(parent, leaf, layer)
    layer.train(parent.training)
    if mode == EVAL:
        layer.register_forward_pre_hook(_keep_eval)
        layer.eval()
    elif mode == FROZEN and isinstance(layer, _BatchNorm):
        layer = FrozenBatchNorm.from_batchnorm(layer)
        setattr(parent, leaf, layer)
    return layer


def _has_statistics(layer: nn.Module) -> bool:
    return isinstance(layer, FrozenBatchNorm) or getattr(layer, "running_mean", None) is not None


def _frozen_names(model: nn.Module) -> set[str]:
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name for name, _ in parameter_shapes(model) if name not in trainable}


def _state(name: str, layer: nn.Module, parameters_frozen: bool) -> BatchNormState:
    kind = layer.original_type if isinstance(layer, FrozenBatchNorm) else type(layer)
    return BatchNormState(name, kind.__name__, mode_of(layer), parameters_frozen)
