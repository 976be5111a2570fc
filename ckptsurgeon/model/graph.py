"""Reading a ``torch.fx`` graph for :mod:`ckptsurgeon.model.identity`: what a branch computes once its last
layers are set to output a constant.

``Folder.fold(node)`` walks back from ``node`` to the nearest conv, linear or norm layer on every path (a
*leaf*: the layer ``identity`` will set), assumes each leaf outputs the scalar its ``leaf_value`` gives, and
carries that scalar forward through the steps in between, in float64 with autograd (so the caller also gets
the gradient of the result with respect to the leaf values). Steps are known by table:

- ``ELEMENTWISE_*``: activations and arithmetic, evaluated on the scalar;
- ``KEEP_*``: reshaping, pooling without padding, dropout (eval): a constant stays that constant;
- ``ZERO_*``: sums and padded average pools: only 0 is kept (a sum of c over n elements is n c).

Any other step, a parameter tensor, or the module's input reached without a leaf makes the fold fail with
a reason naming the step. To support a new step, add its module type, function or method name to a table.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

LAYER_TYPES: tuple[type[nn.Module], ...] = (_ConvNd, nn.Linear, _NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink,
    nn.Threshold)
ACTIVATION_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardtanh, F.softplus, F.softsign,
    F.logsigmoid, torch.clamp, torch.clip})
ACTIVATION_METHODS = frozenset({"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip"})
ARITHMETIC_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub, torch.mul,
    torch.div, torch.neg})
ARITHMETIC_METHODS = frozenset({"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "neg"})
MUL_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({operator.mul, torch.mul, operator.truediv, torch.div})
MUL_METHODS = frozenset({"mul", "mul_", "div", "div_"})

KEEP_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, _DropoutNd, nn.Flatten, nn.Unflatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.MaxPool1d,
    nn.MaxPool2d, nn.MaxPool3d, nn.Upsample)
KEEP_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({
    operator.getitem, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze,
    torch.unsqueeze, torch.mean, torch.amax, torch.amin, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, F.interpolate, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d})
KEEP_METHODS = frozenset({"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
                          "transpose", "squeeze", "unsqueeze", "contiguous", "expand", "expand_as", "repeat",
                          "mean", "amax", "amin", "clone"})
JOIN_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({torch.cat, torch.stack})
ZERO_MODULES: tuple[type[nn.Module], ...] = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
ZERO_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({torch.sum, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d})
ZERO_METHODS = frozenset({"sum"})


@dataclass(frozen=True)
class Fold:
    """What a node computes when every leaf outputs its constant.

    ``value`` is a 0-dim float64 tensor (None when the node is not constant, ``reason`` says why); ``leaves``
    are the layer calls it assumes; ``act`` names the last activation applied after them, if any.
    """

    value: torch.Tensor | None
    leaves: tuple[fx.Node, ...] = ()
    act: str | None = None
    reason: str = ""


def describe_node(node: fx.Node, root: nn.Module, prefix: str) -> str:
    """``"body.4 (BatchNorm2d)"`` for a module call, the function or method name otherwise."""
    if node.op == "call_module":
        name = join_name(prefix, str(node.target))
        kind = type(root.get_submodule(str(node.target))).__name__
        return f"{name} ({kind})" if name else kind
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", node.target))
    return str(node.target)


def join_name(prefix: str, name: str) -> str:
    """``join_name("a", "b") == "a.b"``; either may be empty."""
    return ".".join(part for part in (prefix, name) if part)


def step_name(node: fx.Node, root: nn.Module) -> str:
    """A short lowercase name for an elementwise step: ``sigmoid`` for ``nn.Sigmoid``, ``torch.sigmoid`` or
    ``.sigmoid()``."""
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__.lower()
    if node.op == "call_method":
        return str(node.target).rstrip("_")
    return str(getattr(node.target, "__name__", node.target))


def is_layer(node: fx.Node, root: nn.Module) -> bool:
    """A call of a conv, linear or norm layer (what ``identity`` knows how to set)."""
    return node.op == "call_module" and isinstance(root.get_submodule(str(node.target)), LAYER_TYPES)


def _is(node: fx.Node, root: nn.Module, modules: tuple[type[nn.Module], ...],
        functions: frozenset[Callable[..., Any]], methods: frozenset[str]) -> bool:
    if node.op == "call_module":
        return isinstance(root.get_submodule(str(node.target)), modules)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def node_args(node: fx.Node) -> list[fx.Node]:
    """The nodes among ``node``'s arguments, nested ones included, in order."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _union(folds: list[Fold]) -> tuple[fx.Node, ...]:
    return tuple(dict.fromkeys(leaf for fold in folds for leaf in fold.leaves))


class Folder:
    """Folds the nodes of one graph to constants; ``leaf_value(module)`` is what each leaf layer outputs."""

    def __init__(self, root: nn.Module, prefix: str, leaf_value: Callable[[nn.Module], torch.Tensor]) -> None:
        self.root = root
        self.prefix = prefix
        self.leaf_value = leaf_value
        self._memo: dict[fx.Node, Fold] = {}

    def fold(self, node: fx.Node) -> Fold:
        """What ``node`` computes when every leaf layer before it outputs its constant (memoised)."""
        if node not in self._memo:
            self._memo[node] = self._fold(node)
        return self._memo[node]

    def _fold(self, node: fx.Node) -> Fold:
        describe = describe_node(node, self.root, self.prefix)
        if node.op == "placeholder":
            return Fold(None, reason="it reaches the module's input without passing a conv, linear or norm layer")
        if node.op == "get_attr":
            return Fold(None, reason=f"it uses the tensor {join_name(self.prefix, str(node.target))} directly")
        if node.op == "call_module" and is_layer(node, self.root):
            return Fold(self.leaf_value(self.root.get_submodule(str(node.target))), (node,))
        if node.op == "call_module" and any(True for _ in self.root.get_submodule(str(node.target)).parameters()):
            return Fold(None, reason=f"{describe} has parameters but is not a conv, linear or norm layer")
        inputs = node_args(node)
        if not inputs:
            return Fold(None, reason=f"{describe} takes no tensor")
        if _is(node, self.root, KEEP_MODULES, KEEP_FUNCTIONS, KEEP_METHODS):
            return self.fold(inputs[0])
        if node.op == "call_function" and node.target in JOIN_FUNCTIONS:
            return self._fold_join(node, inputs, describe)
        if _is(node, self.root, ZERO_MODULES, ZERO_FUNCTIONS, ZERO_METHODS):
            first = self.fold(inputs[0])
            if first.value is None or bool(first.value == 0):
                return first
            return Fold(None, reason=f"{describe} of a constant {first.value.item():g} depends on the input's size")
        if _is(node, self.root, ELEMENTWISE_MODULES, ACTIVATION_FUNCTIONS | ARITHMETIC_FUNCTIONS,
               ACTIVATION_METHODS | ARITHMETIC_METHODS):
            return self._fold_elementwise(node, inputs, describe)
        return Fold(None, reason=f"{describe} is not a known elementwise, reshaping or pooling step")

    def _fold_join(self, node: fx.Node, inputs: list[fx.Node], describe: str) -> Fold:
        folds = [self.fold(each) for each in inputs]
        failed = next((fold for fold in folds if fold.value is None), None)
        if failed is not None:
            return failed
        values = {float(fold.value.detach()) for fold in folds if fold.value is not None}
        if len(values) > 1:
            return Fold(None, reason=f"{describe} joins different constants {sorted(values)}")
        return Fold(folds[0].value, _union(folds), folds[0].act)

    def _fold_elementwise(self, node: fx.Node, inputs: list[fx.Node], describe: str) -> Fold:
        folds = [self.fold(each) for each in inputs]
        if _is(node, self.root, (), MUL_FUNCTIONS, MUL_METHODS):
            product = node.target in (operator.mul, torch.mul, "mul", "mul_")
            sides = folds if product else folds[:1]    # a quotient is 0 when its numerator is
            zero = next((fold for fold in sides if fold.value is not None and bool(fold.value == 0)), None)
            if zero is not None:       # 0 * anything is 0, whatever the other side computes
                return zero
        failed = next((fold for fold in folds if fold.value is None), None)
        if failed is not None:
            return failed
        values = {each: fold.value for each, fold in zip(inputs, folds) if fold.value is not None}
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda each: values[each].clone())
        try:
            result = torch.as_tensor(call_node(node, self.root, args, kwargs), dtype=torch.float64)
        except (RuntimeError, TypeError, ValueError) as error:
            return Fold(None, reason=f"{describe} could not be evaluated on a constant ({error})")
        activation = not _is(node, self.root, (), ARITHMETIC_FUNCTIONS, ARITHMETIC_METHODS)
        act = step_name(node, self.root) if activation else next((f.act for f in folds if f.act), None)
        return Fold(result, _union(folds), act)



def call_node(node: fx.Node, root: nn.Module, args: Any, kwargs: Any) -> Any:
    """Run one module, function or method step of the graph on the given arguments (in-place methods run
    out of place: ``add_`` as ``add``)."""
    if node.op == "call_module":
        return root.get_submodule(str(node.target))(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target).rstrip("_"))(*args[1:], **kwargs)
    if not callable(node.target):
        raise TypeError(f"{node.target!r} is not callable")
    return node.target(*args, **kwargs)


IDENTITY_MODULES: tuple[type[nn.Module], ...] = (nn.Identity, _DropoutNd)
IDENTITY_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({F.dropout, F.dropout1d, F.dropout2d, F.dropout3d})
IDENTITY_METHODS = frozenset({"contiguous", "clone"})
ADD_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({operator.add, torch.add, operator.sub, torch.sub})
ADD_METHODS = frozenset({"add", "add_", "sub", "sub_"})
PRODUCT_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset({operator.mul, torch.mul})
PRODUCT_METHODS = frozenset({"mul", "mul_"})


def is_identity_step(node: fx.Node, root: nn.Module) -> bool:
    """``nn.Identity``, dropout (the identity in eval mode), ``.contiguous()``, ``.clone()``."""
    return _is(node, root, IDENTITY_MODULES, IDENTITY_FUNCTIONS, IDENTITY_METHODS)


def is_activation(node: fx.Node, root: nn.Module) -> bool:
    """An elementwise activation (module, function or method)."""
    return _is(node, root, ELEMENTWISE_MODULES, ACTIVATION_FUNCTIONS, ACTIVATION_METHODS)


def is_sum(node: fx.Node, root: nn.Module) -> bool:
    """``a + b``, ``torch.add``, ``.add()``, ``+=`` (traced as ``add``), and the same for ``-``."""
    return _is(node, root, (), ADD_FUNCTIONS, ADD_METHODS)


def is_product(node: fx.Node, root: nn.Module) -> bool:
    """``a * b``, ``torch.mul``, ``.mul()``, ``*=``."""
    return _is(node, root, (), PRODUCT_FUNCTIONS, PRODUCT_METHODS)
