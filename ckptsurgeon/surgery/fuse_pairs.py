"""Which convolution each BatchNorm folds into, for ``fuse-bn``: from a live model, or from a pairs file.

From a model, pairs come from a ``torch.fx`` trace of its eval-mode forward (convolutions, linears and
BatchNorms are leaves, subclasses included): a BatchNorm pairs with the conv whose output is its input,
when that output feeds nothing else and each is called once. fx names each call by its qualified module
name, so ``nn.Sequential`` nesting is seen through. When tracing fails, a BatchNorm pairs with the conv
right before it inside an ``nn.Sequential``, and the pairing's notes say so. Every BatchNorm that does not
pair is kept with its reason (the ``UNFUSED_*`` templates below are the report's exact wording).

A pairs file is JSON: a list of ``["conv", "bn"]`` pairs, or objects ``{"conv": ..., "bn": ..., "eps": ...,
"transposed": true, "groups": 2}`` (``eps`` defaults to ``--eps`` or 1e-5; ``transposed``/``groups``
describe a ConvTranspose, whose output channels a checkpoint's shapes cannot tell).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from ..errors import MappingError

DEFAULT_EPS = 1e-5
TRACED, BY_ORDER, FROM_FILE = "torch.fx", "nn.Sequential order", "pairs file"

UNFUSED_NO_STATS = "tracks no running statistics (it normalises by batch statistics even in eval mode)"
UNFUSED_NOT_CALLED = "not called in forward"
UNFUSED_CALLED_AGAIN = "called {n} times in forward (one fused conv cannot stand for several calls)"
UNFUSED_NO_CONV = "no conv before it (its input is {what})"
UNFUSED_AFTER_LINEAR = "follows a Linear ({name}); only convolutions are fused"
UNFUSED_OUTPUT_SHARED = "the output of {conv} is also used by {others}"
UNFUSED_CONV_CALLED_AGAIN = "{conv} is called {n} times in forward"
UNFUSED_CHANNELS = "{conv} has {c} output channels, {bn} has {n}"
UNFUSED_FIRST = "no conv before it (first in its nn.Sequential)"
UNFUSED_NOT_IN_SEQUENTIAL = "not inside an nn.Sequential (torch.fx could not trace the model, so only " \
                            "nn.Sequential order pairs)"
UNFUSED_NOT_IN_FILE = "not in the pairs file"


class FusePair(NamedTuple):
    """A conv (module name) and the BatchNorm after it, with the BatchNorm's eps; ``transposed`` and ``groups``
    say where the output channels are in the conv's weight; ``how`` what paired them."""

    conv: str
    bn: str
    eps: float = DEFAULT_EPS
    transposed: bool = False
    groups: int = 1
    how: str = TRACED


class Unfused(NamedTuple):
    """A BatchNorm left as it is, and why."""

    bn: str
    reason: str


@dataclass(frozen=True)
class Pairing:
    """The pairs to fuse, the BatchNorms left unfused, and notes on how pairing went."""

    pairs: tuple[FusePair, ...]
    unfused: tuple[Unfused, ...] = ()
    notes: tuple[str, ...] = ()


def pair_from_model(model: Any) -> Pairing:
    """Pair every BatchNorm of ``model`` (an ``nn.Module``) with the conv before it: by a ``torch.fx`` trace,
    or by ``nn.Sequential`` order when tracing fails."""
    try:
        graph = _trace_in_eval_mode(model)
    except Exception as error:   # fx raises many types (TraceError, TypeError, RuntimeError ...)
        return _pair_by_order(model, error)
    return _pair_traced(model, graph)


def is_batchnorm(module: Any) -> bool:
    """A BatchNorm layer (any ``_BatchNorm``, ckptsurgeon's ``FrozenBatchNorm``)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    from ..model.frozen_bn import FrozenBatchNorm

    return isinstance(module, (_BatchNorm, FrozenBatchNorm))


def _trace_in_eval_mode(model: Any) -> Any:
    from torch import fx, nn
    from torch.nn.modules.conv import _ConvNd

    class LayerTracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return isinstance(m, (_ConvNd, nn.Linear)) or is_batchnorm(m) or \
                super().is_leaf_module(m, module_qualified_name)

    modes = [(each, each.training) for each in model.modules()]
    model.eval()
    try:
        return LayerTracer().trace(model)
    finally:
        for each, training in modes:
            each.training = training


def _pair_traced(model: Any, graph: Any) -> Pairing:
    modules = dict(model.named_modules())
    calls: dict[str, list[Any]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    found = [_pair_call(name, module, calls, modules) for name, module in modules.items() if is_batchnorm(module)]
    return _split(found)


def _split(found: list[FusePair | Unfused], notes: tuple[str, ...] = ()) -> Pairing:
    return Pairing(tuple(p for p in found if isinstance(p, FusePair)),
                   tuple(u for u in found if isinstance(u, Unfused)), notes)


def _pair_call(name: str, bn: Any, calls: Mapping[str, list[Any]], modules: Mapping[str, Any]) -> FusePair | Unfused:
    from torch import fx, nn
    from torch.nn.modules.conv import _ConvNd

    if getattr(bn, "running_var", None) is None:
        return Unfused(name, UNFUSED_NO_STATS)
    own = calls.get(name, [])
    if len(own) != 1:
        return Unfused(name, UNFUSED_CALLED_AGAIN.format(n=len(own)) if own else UNFUSED_NOT_CALLED)
    source = own[0].args[0] if own[0].args else None
    if not isinstance(source, fx.Node):
        return Unfused(name, UNFUSED_NO_CONV.format(what="not a tensor computed in forward"))
    layer = modules.get(str(source.target)) if source.op == "call_module" else None
    if isinstance(layer, nn.Linear):
        return Unfused(name, UNFUSED_AFTER_LINEAR.format(name=source.target))
    if not isinstance(layer, _ConvNd):
        return Unfused(name, UNFUSED_NO_CONV.format(what=describe_node(source, modules)))
    conv = str(source.target)
    if len(calls[conv]) > 1:
        return Unfused(name, UNFUSED_CONV_CALLED_AGAIN.format(conv=conv, n=len(calls[conv])))
    others = [describe_node(user, modules) for user in source.users if user is not own[0]]
    if others:
        return Unfused(name, UNFUSED_OUTPUT_SHARED.format(conv=conv, others=", ".join(others)))
    return _checked_pair(conv, layer, name, bn, TRACED)


def _checked_pair(conv: str, layer: Any, name: str, bn: Any, how: str) -> FusePair | Unfused:
    if layer.out_channels != bn.num_features:
        return Unfused(name, UNFUSED_CHANNELS.format(conv=conv, c=layer.out_channels, bn=name, n=bn.num_features))
    return FusePair(conv, name, float(bn.eps), bool(layer.transposed), int(layer.groups), how)


def describe_node(node: Any, modules: Mapping[str, Any]) -> str:
    """A graph node in words: ``layer1.0.relu (ReLU)``, ``add(...)``, ``the model's input``."""
    if node.op == "placeholder":
        return "the model's input"
    if node.op == "output":
        return "the model's output"
    if node.op == "call_module":
        return f"{node.target} ({type(modules.get(str(node.target))).__name__})"
    if node.op == "call_method":
        return f".{node.target}(...)"
    if node.op == "get_attr":
        return f"the tensor {node.target}"
    return f"{getattr(node.target, '__name__', node.target)}(...)"


def _pair_by_order(model: Any, error: Exception) -> Pairing:
    from torch import nn
    from torch.nn.modules.conv import _ConvNd

    lines = str(error).strip().splitlines()
    note = (f"paired by nn.Sequential order; torch.fx could not trace {type(model).__name__}: "
            f"{type(error).__name__}: {lines[0] if lines else ''}")
    placed: dict[str, FusePair | Unfused] = {}
    for parent, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        for index, (child, module) in enumerate(children):
            if not is_batchnorm(module):
                continue
            name = f"{parent}.{child}" if parent else child
            before = children[index - 1] if index else None
            prev = f"{parent}.{before[0]}" if before and parent else before[0] if before else ""
            if getattr(module, "running_var", None) is None:
                placed[name] = Unfused(name, UNFUSED_NO_STATS)
            elif before is None:
                placed[name] = Unfused(name, UNFUSED_FIRST)
            elif isinstance(before[1], _ConvNd):
                placed[name] = _checked_pair(prev, before[1], name, module, BY_ORDER)
            elif isinstance(before[1], nn.Linear):
                placed[name] = Unfused(name, UNFUSED_AFTER_LINEAR.format(name=prev))
            else:
                placed[name] = Unfused(name, UNFUSED_NO_CONV.format(what=f"{prev} ({type(before[1]).__name__})"))
    found = [placed.get(name) or Unfused(name, UNFUSED_NOT_IN_SEQUENTIAL)
             for name, module in model.named_modules() if is_batchnorm(module)]
    return _split(found, (note,))


def read_pairs_file(path: str | os.PathLike[str], *, eps: float | None = None) -> tuple[FusePair, ...]:
    """The pairs of a JSON pairs file (see the module docstring); ``eps`` for pairs that give none."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MappingError(f"--pairs {os.fspath(path)}: cannot read it as JSON ({exc}); expected a list of "
                           f"[\"conv\", \"bn\"] pairs, e.g. [[\"conv1\", \"bn1\"]]") from None
    if not isinstance(data, list):
        raise MappingError(f"--pairs {os.fspath(path)}: expected a JSON list of [\"conv\", \"bn\"] pairs")
    return parse_pairs(data, eps=eps, where=f"--pairs {os.fspath(path)}")


def parse_pairs(items: Iterable[Any], *, eps: float | None = None, where: str = "pairs") -> tuple[FusePair, ...]:
    """Pairs from ``["conv", "bn"]`` lists, ``{"conv", "bn", "eps", "transposed", "groups"}`` objects or
    FusePairs; a conv or BatchNorm named twice is an error."""
    pairs = [_parse_pair(item, DEFAULT_EPS if eps is None else eps, where) for item in items]
    for field in ("conv", "bn"):
        seen: set[str] = set()
        for pair in pairs:
            name = getattr(pair, field)
            if name in seen:
                raise MappingError(f"{where}: {field} {name!r} is in two pairs; each conv and BatchNorm fuses once")
            seen.add(name)
    return tuple(pairs)


def _parse_pair(item: Any, eps: float, where: str) -> FusePair:
    if isinstance(item, FusePair):
        return item
    if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(part, str) for part in item):
        return FusePair(item[0], item[1], eps, how=FROM_FILE)
    if isinstance(item, dict) and isinstance(item.get("conv"), str) and isinstance(item.get("bn"), str) \
            and set(item) <= {"conv", "bn", "eps", "transposed", "groups"}:
        own_eps, groups = item.get("eps", eps), item.get("groups", 1)
        if not isinstance(own_eps, (int, float)) or isinstance(own_eps, bool) or not own_eps >= 0:
            raise MappingError(f"{where}: eps {own_eps!r} of {item['bn']!r} is not a non-negative number")
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise MappingError(f"{where}: groups {groups!r} of {item['conv']!r} is not a positive integer")
        return FusePair(item["conv"], item["bn"], float(own_eps), bool(item.get("transposed", False)), groups,
                        FROM_FILE)
    raise MappingError(f"{where}: {item!r} is not a pair; give [\"conv\", \"bn\"] or {{\"conv\": \"...\", "
                       f"\"bn\": \"...\", \"eps\": 0.001}}")


def unlisted_batchnorms(keys: Iterable[str], pairs: Sequence[FusePair]) -> tuple[Unfused, ...]:
    """BatchNorms the checkpoint's keys show (``running_mean`` and ``running_var``) that no pair names."""
    from ..model.batchnorm import batchnorm_layers_from_keys

    named = {pair.bn for pair in pairs}
    return tuple(Unfused(bn, UNFUSED_NOT_IN_FILE) for bn, _ in batchnorm_layers_from_keys(keys) if bn not in named)
