"""Reading a module as a path from its output back to its input, for :mod:`.identity`: which steps keep the
identity (a residual sum, a gate, a channel-keeping layer, dropout) and which tensors to set so that they do
(:class:`Setting`), or why they cannot. Pure: it reads the module's structure and tensors, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .graph import (Fold, Folder, call_node, describe_node, is_activation, is_identity_step, is_layer, is_product,
                    is_sum, join_name, node_args, step_name)

Kind = Literal["residual", "gate", "dirac", "none"]


@dataclass(frozen=True)
class Setting:
    """One tensor to set: ``name`` of the submodule ``module`` (relative), filled by ``fill``: ``zeros``,
    ``ones``, ``constant`` (``value``), ``dirac`` (in ``groups``) or ``eye``."""

    module: str
    name: str
    fill: str
    value: float = 0.0
    groups: int = 1

    @property
    def tensor(self) -> str:
        """The tensor's name relative to the analysed module."""
        return join_name(self.module, self.name)

    def under(self, parent: str) -> Setting:
        """The same setting seen from ``parent``'s parent."""
        return replace(self, module=join_name(parent, self.module))


@dataclass(frozen=True)
class Path:
    """How a node computes from the module's input: ``scale`` times the input once ``settings`` apply
    (``reason`` None), or why it cannot be the identity. ``claimed`` are the graph's calls the settings
    account for; ``score`` ranks failed readings of one node (how much of the structure was recognised)."""

    kind: Kind
    settings: tuple[Setting, ...] = ()
    scale: float = 1.0
    claimed: tuple[fx.Node, ...] = ()
    steps: tuple[str, ...] = ()
    reason: str | None = None
    score: int = 0

    @property
    def ok(self) -> bool:
        """The node is the identity (up to ``scale``) once the settings apply."""
        return self.reason is None

    def then(self, kind: Kind, settings: tuple[Setting, ...], scale: float, steps: tuple[str, ...],
             claimed: tuple[fx.Node, ...] = ()) -> Path:
        """This path followed by one more step (a ``"none"`` step keeps the kind)."""
        return Path(self.kind if kind == "none" else kind, self.settings + settings, self.scale * scale,
                    self.claimed + claimed, self.steps + steps)


def _unit_var(eps: float, dtype: torch.dtype) -> float:
    """A running variance with ``var + eps == 1`` in ``dtype`` (``1 - eps``, nudged past rounding)."""
    one = torch.ones((), dtype=dtype)
    var = one - eps
    for _ in range(8):
        if bool(var + eps < one):
            var = torch.nextafter(var, one)
        elif bool(var + eps > one):
            var = torch.nextafter(var, torch.zeros_like(one))
    return float(var)


def _conv_refusal(conv: _ConvNd, describe: str) -> str | None:
    kernel, dilation = tuple(conv.kernel_size), tuple(conv.dilation)
    need = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    padding = (0,) * len(kernel) if conv.padding == "valid" else conv.padding
    if conv.transposed:
        return f"{describe} is a transposed conv: ckptsurgeon does not make it the identity"
    if conv.in_channels != conv.out_channels:
        return f"{describe} maps {conv.in_channels} channels to {conv.out_channels}: no weights make it the identity"
    if any(s != 1 for s in conv.stride):
        return f"{describe} has stride {tuple(conv.stride)}: it changes the size"
    if any(k % 2 == 0 for k in kernel):
        return f"{describe} has an even kernel {kernel}: no centre tap can copy the input"
    if padding != "same" and tuple(padding) != need:
        return f"{describe} has padding {tuple(padding)}: it changes the size (the identity needs {need})"
    return None


def _zero_bias(module: nn.Module, target: str) -> tuple[Setting, ...]:
    return (Setting(target, "bias", "zeros"),) if getattr(module, "bias", None) is not None else ()


def layer_identity(module: nn.Module, target: str, describe: str) -> tuple[str | None, tuple[Setting, ...], str]:
    """(refusal, settings, step) for a conv, linear or norm layer on the path from the input."""
    if isinstance(module, _ConvNd):
        refusal = _conv_refusal(module, describe)
        groups = f" in {module.groups} groups" if module.groups > 1 else ""
        settings = (Setting(target, "weight", "dirac", groups=module.groups),) + _zero_bias(module, target)
        return refusal, () if refusal else settings, f"{describe}: dirac weight{groups}, bias 0"
    if isinstance(module, nn.Linear):
        if module.in_features != module.out_features:
            return (f"{describe} maps {module.in_features} features to {module.out_features}: only a square "
                    f"Linear can be the identity"), (), ""
        return None, (Setting(target, "weight", "eye"),) + _zero_bias(module, target), \
            f"{describe}: identity weight, bias 0"
    if isinstance(module, _BatchNorm):
        if module.running_var is None:
            return (f"{describe} has no running statistics (track_running_stats=False): it normalises by the "
                    f"batch even in eval mode"), (), ""
        stats = (Setting(target, "running_mean", "zeros"),
                 Setting(target, "running_var", "constant", _unit_var(module.eps, module.running_var.dtype)))
        affine = (Setting(target, "weight", "ones"),) + _zero_bias(module, target) if module.weight is not None else ()
        return None, affine + stats, \
            f"{describe}: weight 1, bias 0, running_mean 0, running_var 1 - eps (the identity in eval mode)"
    return f"{describe} normalises its input: no weights make it the identity", (), ""


_PROBE = (-1.0, 1.0, -0.5, 0.5, -3.0, 3.0, 0.0)


class SpineReader:
    """Reads one graph from its output back to the input: which steps keep the identity and what to set."""

    def __init__(self, root: nn.Module, graph: fx.Graph, prefix: str, gate_bias: float) -> None:
        self.root, self.graph, self.prefix, self.gate_bias = root, graph, prefix, gate_bias
        self.input = next((node for node in graph.nodes if node.op == "placeholder"), None)
        self.bias = torch.tensor(gate_bias, dtype=torch.float64, requires_grad=True)
        zero = torch.zeros((), dtype=torch.float64)
        self.zeros = Folder(root, prefix, lambda module: zero)
        self.gates = Folder(root, prefix,
                            lambda module: self.bias if getattr(module, "bias", None) is not None else zero)
        self._memo: dict[fx.Node, Path] = {}

    def read(self) -> Path:
        """The path of the module's output."""
        result = next(node for node in self.graph.nodes if node.op == "output").args[0]
        if not isinstance(result, fx.Node):
            return Path("none", reason=f"{type(self.root).__name__} returns a {type(result).__name__}, not one tensor")
        path = self.path(result)
        return self._check_shared(path) if path.ok else path

    def path(self, node: fx.Node) -> Path:
        """How ``node`` computes from the input (memoised)."""
        if node not in self._memo:
            self._memo[node] = self._path(node)
        return self._memo[node]

    def _path(self, node: fx.Node) -> Path:
        describe = self._describe(node)
        if node.op == "placeholder":
            return Path("none") if node is self.input else Path("none", reason=f"{describe} is not the first input")
        if node.op in ("call_module", "call_function", "call_method"):
            if is_sum(node, self.root):
                return self._best([self._residual(node, spine, branch) for spine, branch in self._operands(node)])
            if is_product(node, self.root):
                return self._best([self._gate(node, spine, gate) for spine, gate in self._operands(node)])
            if is_layer(node, self.root):
                return self._layer(node)
            if is_identity_step(node, self.root) or is_activation(node, self.root):
                return self._elementwise(node)
        return Path("none", reason=f"{describe} is on the path from the input to the output and is not a residual "
                                   f"sum, a gate, a channel-keeping layer or the identity")

    def _operands(self, node: fx.Node) -> list[tuple[fx.Node, fx.Node]]:
        first, second = (tuple(node.args) + (None, None))[:2]
        if not (isinstance(first, fx.Node) and isinstance(second, fx.Node)):
            return []
        ordered = "sub" in str(getattr(node.target, "__name__", node.target)) or node.kwargs.get("alpha", 1) != 1
        return [(first, second)] if ordered else [(first, second), (second, first)]

    def _best(self, attempts: list[Path]) -> Path:
        if not attempts:
            return Path("none", reason="a sum or product with a constant is not the identity")
        return max(attempts, key=lambda path: (path.ok, path.score))

    def _operand(self, node: fx.Node, spine: fx.Node, operand: fx.Node, folder: Folder, form: str
                 ) -> tuple[Fold, Path, Path | None]:
        """Fold a residual branch or a gate (``form``: ``x + f(x)``, ``x * g(x)``) and read the spine before
        it; the third item is the answer already, when either of them decides it."""
        fold, inner = folder.fold(operand), self.path(spine)
        if fold.value is None:
            return fold, inner, Path(inner.kind, score=2 if inner.ok else 0, reason=(
                f"{self._describe(node)} is not {form} with {form[-4]} ending in a conv, linear or norm layer: "
                f"{fold.reason}"))
        return fold, inner, (None if inner.ok else replace(inner, score=1))

    def _residual(self, node: fx.Node, spine: fx.Node, branch: fx.Node) -> Path:
        fold, inner, decided = self._operand(node, spine, branch, self.zeros, "x + f(x)")
        if decided is not None:
            return decided
        assert fold.value is not None   # a fold without a value decides (_operand)
        leaves = self._names(fold.leaves)
        stuck = self._without(fold, "weight")
        if stuck:
            return Path("residual", score=3, reason=f"{stuck} has no affine weight: the branch cannot be set to 0")
        if bool(fold.value != 0):
            value = f"{fold.act}(0) = {float(fold.value):g}" if fold.act else f"{float(fold.value):g}"
            return Path("residual", score=3, reason=f"with {leaves} set to 0 the branch f(x) is {value}, not 0, "
                                                    f"so x + f(x) is not x")
        settings = tuple(Setting(target, name, "zeros") for target in self._targets(fold)
                         for name in ("weight", "bias") if getattr(self._module(target), name, None) is not None)
        step = f"x + f(x): {leaves} weight and bias set to 0, so f(x) = 0"
        return inner.then("residual", settings, 1.0, (step,), fold.leaves)

    def _gate(self, node: fx.Node, spine: fx.Node, gate: fx.Node) -> Path:
        fold, inner, decided = self._operand(node, spine, gate, self.gates, "x * g(x)")
        if decided is not None:
            return decided
        assert fold.value is not None   # a fold without a value decides (_operand)
        refusal = self._gate_refusal(fold)
        if refusal is not None:
            return Path("gate", score=3, reason=refusal)
        value, squash = float(fold.value.detach()), f"{fold.act}(g(x))" if fold.act else "g(x)"
        settings = tuple(setting for target in self._targets(fold) for setting in (
            Setting(target, "weight", "zeros"), Setting(target, "bias", "constant", self.gate_bias))
            if getattr(self._module(target), setting.name, None) is not None)
        step = (f"x * {squash}: {self._names(fold.leaves)} weight 0 and bias {self.gate_bias:g}, so the gate "
                f"starts at {value:.4f}")
        return inner.then("gate", settings, value, (step,), fold.leaves)

    def _gate_refusal(self, fold: Fold) -> str | None:
        assert fold.value is not None
        value, leaves = float(fold.value.detach()), self._names(fold.leaves)
        stuck = self._without(fold, "weight")
        if stuck:
            return f"{stuck} has no affine weight: the gate cannot be set to a constant"
        if abs(1.0 - value) >= 0.5:
            biasless = self._without(fold, "bias", typed=False)
            if not biasless:
                return (f"with {leaves} at weight 0 and bias {self.gate_bias:g} the gate is {value:.4g}, "
                        f"not close to 1")
            has = "have" if " and " in biasless else "has"
            gate, scale = (f"a {fold.act} gate", f"{fold.act}(W·z)") if fold.act else ("a gate", "W·z")
            return (f"{biasless} {has} no bias: {gate} without a bias scales by {scale}, {value:g} at W = 0, "
                    f"and no weights make it 1 for every input")
        if not fold.value.requires_grad or float(torch.autograd.grad(fold.value, self.bias, retain_graph=True)[0]) == 0:
            return (f"with {leaves} at weight 0 and bias {self.gate_bias:g} the gate starts at {value:g} with "
                    f"gradient 0, so it could never learn; choose a smaller gate_bias")
        return None

    def _layer(self, node: fx.Node) -> Path:
        inputs, describe = node_args(node), self._describe(node)
        if len(inputs) != 1 or node.args[:1] != (inputs[0],):
            return Path("none", reason=f"{describe} takes more than the tensor on the path")
        inner = self.path(inputs[0])
        if not inner.ok:
            return inner
        module = self._module(str(node.target))
        refusal, settings, step = layer_identity(module, str(node.target), describe)
        kind: Kind = "dirac" if isinstance(module, (_ConvNd, nn.Linear, _BatchNorm)) else "none"
        if refusal is not None:
            return Path(kind, reason=refusal)
        return inner.then(kind, settings, 1.0, (step,), (node,))

    def _elementwise(self, node: fx.Node) -> Path:
        inputs, describe = node_args(node), self._describe(node)
        if len(inputs) != 1:
            return Path("none", reason=f"{describe} takes more than the tensor on the path")
        inner = self.path(inputs[0])
        if not inner.ok or is_identity_step(node, self.root):
            return inner
        probe = torch.tensor(_PROBE, dtype=torch.float64)
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda each: probe.clone())
        try:
            out = torch.as_tensor(call_node(node, self.root, args, kwargs), dtype=torch.float64)
        except (RuntimeError, TypeError, ValueError) as error:
            return Path(inner.kind, reason=f"{describe} could not be evaluated ({error})")
        changed = [i for i, (a, b) in enumerate(zip(probe.tolist(), out.tolist())) if a != b]
        if not changed:
            return inner
        before = "the input" if inputs[0] is self.input else self._describe(inputs[0])
        t, ft, name = _PROBE[changed[0]], out.tolist()[changed[0]], step_name(node, self.root)
        return Path(inner.kind, reason=f"{describe} after {before} is not the identity: "
                                       f"{name}({t:g}) = {ft:g}, not {t:g}")

    def _check_shared(self, path: Path) -> Path:
        """Refuse settings that would change a call outside the structure, or one tensor two ways."""
        chosen: dict[str, Setting] = {}
        for setting in path.settings:
            if chosen.setdefault(setting.tensor, setting) != setting:
                return Path(path.kind, reason=f"{join_name(self.prefix, setting.tensor)} would need two values "
                                              f"({chosen[setting.tensor].fill} and {setting.fill}): its layer is "
                                              f"called at two places that need different ones")
        claimed = set(path.claimed)
        for target in dict.fromkeys(setting.module for setting in path.settings):
            for node in self.graph.nodes:
                uses = (node.op == "call_module" and node.target == target) or (
                    node.op == "get_attr" and (node.target == target or str(node.target).startswith(target + ".")))
                if uses and node not in claimed:
                    name = join_name(self.prefix, target) or type(self.root).__name__
                    return Path(path.kind, reason=f"{name} is also used outside the {path.kind} (graph node "
                                                  f"{node.name}): setting it would change that too")
        return path

    def _module(self, target: str) -> nn.Module:
        return self.root.get_submodule(target)

    def _describe(self, node: fx.Node) -> str:
        return describe_node(node, self.root, self.prefix)

    def _targets(self, fold: Fold) -> list[str]:
        return list(dict.fromkeys(str(leaf.target) for leaf in fold.leaves))

    def _names(self, nodes: tuple[fx.Node, ...], typed: bool = True) -> str:
        names = list(dict.fromkeys(self._describe(node) if typed else join_name(self.prefix, str(node.target))
                                   for node in nodes))
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

    def _without(self, fold: Fold, name: str, typed: bool = True) -> str:
        """The leaves of ``fold`` that have no tensor ``name``, as text ("" when all have one)."""
        missing = tuple(leaf for leaf in fold.leaves if getattr(self._module(str(leaf.target)), name, None) is None)
        return self._names(missing, typed) if missing else ""
