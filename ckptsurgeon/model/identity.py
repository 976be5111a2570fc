"""Function-preserving initialisation of an inserted module: ``make_identity`` sets the tensors that make a
block (SE, CBAM, ECA, a residual adapter, a channel-keeping conv) start as the identity, so a pretrained
network with the block inserted computes what it computed before.

The structure comes from a ``torch.fx.symbolic_trace`` of the module (a bare torch.nn layer is read by its
type; when tracing fails an ``nn.Sequential`` is read child by child, anything else is refused). From the
output back to the input, every step on the path must keep the identity:

- ``x + f(x)`` (residual): the last conv, linear or norm layer of ``f`` on each path is set to output 0 (an
  affine norm gets weight and bias 0: "zero-init the last BN gamma", the rest of ``f`` keeps its values);
  what follows it must map 0 to 0 (relu, gelu, silu do; sigmoid gives 0.5 and is refused).
- ``x * g(x)`` (gate): the last layer of ``g`` gets weight 0 and bias ``gate_bias``, so the gate starts at
  ``sigmoid(gate_bias)`` whatever the input: 0.9933 for 5.0, close to 1 and still trainable (its gradient
  is 0.0066; a saturated gate, e.g. ``hardsigmoid(5) = 1``, is refused, and so is one that would start
  further than 0.5 from 1). Without a bias no weights open it. A layer called on several paths of one gate
  adds its bias on each (CBAM's shared MLP starts at ``sigmoid(2 * gate_bias)``); chained gates multiply.
- a conv with as many output as input channels, odd kernel, stride 1 and size-keeping padding gets a dirac
  weight; a square Linear the identity matrix; a BatchNorm passes through in eval mode (weight 1, bias 0,
  running mean 0, running var ``1 - eps``). Dropout and ``nn.Identity`` keep it; an activation breaks it.

The analysis is pure; tensors change only when the whole module can be the identity (then
``IdentityInit.ok``), never partly, and never when a tensor to set is also used outside the structure (a
layer called elsewhere, a tied parameter). The reading is in :mod:`.identity_path`; to support a new step, add it
to the tables of ``model.graph``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import chain
from typing import Callable

import torch
from torch import fx, nn

from ..errors import MappingError, OptionError
from .graph import ELEMENTWISE_MODULES, IDENTITY_MODULES, LAYER_TYPES, join_name
from .identity_path import Kind, Path, Setting, SpineReader


@dataclass(frozen=True)
class IdentityInit:
    """What ``make_identity`` did to a module, or why it could not.

    ``module`` is the dotted path given to ``identity_for`` ("" from ``make_identity``), ``module_type`` its
    class name. ``kind`` is the structure recognised (the outermost one for a chain), ``"none"`` when none
    was. ``tensors`` are the names, relative to the module, of the tensors set (empty unless ``ok``).
    ``expected_error`` is ``max|out - x| / max|x|`` in eval mode right after: 0.0 for residual and dirac
    kinds, ``1 - sigmoid(gate_bias)`` for one open gate (a product for chained gates), None unless ``ok``.
    ``reason`` says what was set, or exactly why nothing was.
    """

    module: str
    module_type: str
    kind: Kind
    ok: bool
    tensors: tuple[str, ...]
    expected_error: float | None
    reason: str


_BY_TYPE: tuple[type[nn.Module], ...] = LAYER_TYPES + ELEMENTWISE_MODULES + IDENTITY_MODULES


def make_identity(module: nn.Module, *, gate_bias: float = 5.0) -> IdentityInit:
    """Set, in place, the tensors that make ``module`` start as the identity (output == input, eval mode).

    Args:
        module: the inserted block (or layer).
        gate_bias: the bias of a gate's last layer; the gate starts open at ``sigmoid(gate_bias)``.

    Returns:
        an ``IdentityInit``; when it is not ``ok`` no tensor was changed.
    """
    return _make_identity(module, "", gate_bias)


def identity_for(model: nn.Module, module_path: str, *, gate_bias: float = 5.0) -> IdentityInit:
    """``make_identity`` on the submodule at ``module_path`` (``"neck.att1"``); names in the reason carry
    the path. Raises MappingError when ``model`` has no such submodule."""
    try:
        module = model.get_submodule(module_path)
    except AttributeError as error:
        raise MappingError(f"no module {module_path!r} in {type(model).__name__} ({error}); "
                           f"use a dotted name from model.named_modules()") from None
    return _make_identity(module, module_path, gate_bias)


def _make_identity(module: nn.Module, prefix: str, gate_bias: float) -> IdentityInit:
    if not (math.isfinite(gate_bias) and gate_bias > 0):
        raise OptionError(f"gate_bias must be a finite number > 0, got {gate_bias!r}: a gate opens at "
                          f"sigmoid(gate_bias), e.g. 5.0 gives 0.9933")
    path = analyse_module(module, prefix, gate_bias)
    conflict = _tied_conflict(module, prefix, path.settings) if path.ok else None
    name = type(module).__name__
    if path.reason is not None or conflict is not None:
        return IdentityInit(prefix, name, path.kind, False, (), None, conflict or path.reason or "")
    apply_settings(module, path.settings)
    reason = "; ".join(path.steps) or f"{name} is already the identity: nothing to set"
    return IdentityInit(prefix, name, path.kind, True, tuple(dict.fromkeys(s.tensor for s in path.settings)),
                        abs(1.0 - path.scale), reason)


def analyse_module(module: nn.Module, prefix: str, gate_bias: float) -> Path:
    """How ``module`` can be made the identity (``Path.reason`` None) or why not, without changing it."""
    if type(module).__module__.startswith("torch.nn.") and isinstance(module, _BY_TYPE):
        return _read_by_type(module, prefix, gate_bias)    # a torch.nn layer is what its type says
    try:
        graph = _trace_in_eval_mode(module)
    except Exception as error:    # fx raises many types (TraceError, TypeError, RuntimeError ...)
        return _read_untraced(module, prefix, gate_bias, error)
    return SpineReader(module, graph, prefix, gate_bias).read()


def _trace_in_eval_mode(module: nn.Module) -> fx.Graph:
    """The graph of ``module``'s eval-mode forward, where the identity is promised (``if self.training``
    branches such as drop-path fall away); every submodule's training flag is restored after."""
    modes = [(each, each.training) for each in module.modules()]
    module.eval()
    try:
        return fx.symbolic_trace(module).graph
    finally:
        for each, training in modes:
            each.training = training


def _read_by_type(module: nn.Module, prefix: str, gate_bias: float) -> Path:
    graph = fx.Graph()
    graph.output(graph.call_module("", (graph.placeholder("x"),)))
    return SpineReader(module, graph, prefix, gate_bias).read()


def _read_untraced(module: nn.Module, prefix: str, gate_bias: float, error: Exception) -> Path:
    """The fallback when tracing fails: a subclass of a torch.nn layer is read as that layer, a Sequential
    child by child; the result says so."""
    lines = str(error).strip().splitlines()
    failed = f"torch.fx could not trace {type(module).__name__} ({type(error).__name__}: {lines[0] if lines else ''})"
    if isinstance(module, _BY_TYPE):
        base = next(kind for kind in type(module).__mro__ if kind.__module__.startswith("torch.nn."))
        path = _read_by_type(module, prefix, gate_bias)
        note = f"{failed}; read by its type as {base.__name__}"
        return replace(path, steps=(note,) + path.steps) if path.ok else replace(path, reason=f"{note}: {path.reason}")
    if not isinstance(module, nn.Sequential):
        return Path("none", reason=f"{failed}; untraceable modules are read only by type (a conv, linear, norm, "
                                   f"activation, dropout or Sequential), and it is none of these")
    composed = Path("none")
    for child_name, child in module.named_children():
        part = analyse_module(child, join_name(prefix, child_name), gate_bias)
        if part.reason is not None:
            return Path(part.kind, reason=f"{failed}; read as a Sequential: {part.reason}")
        composed = composed.then(part.kind, tuple(s.under(child_name) for s in part.settings), part.scale,
                                 part.steps)
    return replace(composed, steps=(f"{failed}; read as a Sequential of its children",) + composed.steps)


def _fill_eye(tensor: torch.Tensor, setting: Setting) -> object:
    return tensor.copy_(torch.eye(tensor.shape[0], dtype=tensor.dtype, device=tensor.device))


_FILLS: dict[str, Callable[[torch.Tensor, Setting], object]] = {
    "zeros": lambda tensor, setting: tensor.zero_(),
    "ones": lambda tensor, setting: tensor.fill_(1.0),
    "constant": lambda tensor, setting: tensor.fill_(setting.value),
    "dirac": lambda tensor, setting: nn.init.dirac_(tensor, groups=setting.groups),
    "eye": _fill_eye,
}


def apply_settings(module: nn.Module, settings: tuple[Setting, ...]) -> None:
    """Fill each tensor in place (no autograd record)."""
    with torch.no_grad():
        for setting in settings:
            _FILLS[setting.fill](getattr(module.get_submodule(setting.module), setting.name), setting)


def _tied_conflict(module: nn.Module, prefix: str, settings: tuple[Setting, ...]) -> str | None:
    names: dict[int, list[str]] = {}
    for name, tensor in chain(module.named_parameters(remove_duplicate=False),
                              module.named_buffers(remove_duplicate=False)):
        names.setdefault(id(tensor), []).append(name)
    chosen = {setting.tensor for setting in settings}
    for setting in settings:
        tensor = getattr(module.get_submodule(setting.module), setting.name)
        others = [name for name in names.get(id(tensor), []) if name not in chosen]
        if others:
            return (f"{join_name(prefix, setting.tensor)} is also registered as {join_name(prefix, others[0])} "
                    f"(tied): setting it would change that too")
    return None
