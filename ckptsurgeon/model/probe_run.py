"""One recorded forward for :mod:`.probe`: the hooks that describe a module's inputs, output and children's
outputs, the call stack that names the module a failing forward raised in, and the inputs it is fed.

Hooks are registered by :meth:`Recorder.attach` and removed by the caller (``handle.remove()``), always.
Nothing here keeps a tensor once its hook returns: what is kept is its :class:`~.nested.Node`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import ProbeError
from .nested import Node, Where, describe_value, flatten


class ForwardFailed(Exception):
    """The forward raised ``error`` while ``module`` (the innermost one running) had been given ``given``."""

    def __init__(self, module: str, type_name: str, given: list[tuple[str, Node]], error: Exception) -> None:
        super().__init__(module, error)
        self.module, self.type_name, self.given, self.error = module, type_name, given, error

    def summary(self) -> str:
        """One line: ``in 'backbone.stem' (Conv2d) given input[0] (6, 4, 32, 32) float32: RuntimeError: ...``."""
        given = ", ".join(f"{path} {node.text()}" for path, node in self.given[:6]) or "no arguments"
        if len(self.given) > 6:
            given += f" and {len(self.given) - 6} more"
        where = f"in {self.module!r}" if self.module else "in the model's own forward"
        return f"{where} ({self.type_name}) given {given}: {type(self.error).__name__}: {one_line(str(self.error))}"


class Recorder:
    """Describes what ``target`` takes and returns at its first call, and what each of its direct children
    returns during that call, in call order (a child called twice is recorded twice)."""

    def __init__(self, target: nn.Module, prefix: str = "") -> None:
        self.target, self.prefix = target, prefix
        self.children: dict[int, str] = {}
        for name, child in target.named_children():
            self.children.setdefault(id(child), name)
        self.args: Node | None = None
        self.kwargs: Node | None = None
        self.output: Node | None = None
        self.calls = 0
        self.stages: list[tuple[str, int, str, Node]] = []   # name, call, class, output
        self._active = False
        self._counts: dict[str, int] = {}
        self._stack: list[tuple[str, nn.Module, tuple[Any, ...], dict[str, Any]]] = []

    def attach(self, runner: nn.Module) -> list[RemovableHandle]:
        """Hook ``runner`` and every module in it; the caller removes the returned handles."""
        handles = []
        for name, sub in runner.named_modules():
            handles.append(sub.register_forward_pre_hook(self._push(name), with_kwargs=True))
            handles.append(sub.register_forward_hook(self._pop, with_kwargs=True))
        handles.append(self.target.register_forward_pre_hook(self._enter, with_kwargs=True))
        handles.append(self.target.register_forward_hook(self._leave, with_kwargs=True))
        for child in {id(child): child for child in self.target.children()}.values():
            handles.append(child.register_forward_hook(self._stage, with_kwargs=True))
        return handles

    def run(self, runner: nn.Module, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Call ``runner``; a failure becomes :class:`ForwardFailed` naming the innermost running module."""
        try:
            runner(*args, **kwargs)
        except Exception as exc:   # user code: whatever it raises is reported with where it happened
            name, module, given_args, given_kwargs = self._stack[-1] if self._stack else ("", runner, tuple(args), kwargs)
            given = [row for value in (tuple(given_args), dict(given_kwargs)) if value
                     for row in flatten(describe_value(value), Where("input"))]
            full = ".".join(part for part in (self.prefix, name) if part)
            raise ForwardFailed(full, type(module).__name__, given, exc) from exc

    def not_called(self) -> tuple[str, ...]:
        called = {name for name, *_ in self.stages}
        return tuple(name for name in dict.fromkeys(self.children.values()) if name not in called)

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self._stack.append((name, module, args, kwargs))
        return hook

    def _pop(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        # Pop down to this module's own entry: entries above it belong to calls whose exception the model
        # caught itself.
        while self._stack:
            if self._stack.pop()[1] is module:
                break

    def _enter(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            self.args, self.kwargs = describe_value(tuple(args)), describe_value(dict(kwargs))
            self._active = True

    def _leave(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if self._active:
            self.output, self._active = describe_value(output), False

    def _stage(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if self._active:
            name = self.children[id(module)]
            self._counts[name] = self._counts.get(name, 0) + 1
            self.stages.append((name, self._counts[name], type(module).__name__, describe_value(output)))


def make_inputs(shapes: Sequence[Sequence[int]], dtypes: Sequence[torch.dtype], seed: int,
                device: str | torch.device) -> list[torch.Tensor]:
    """One input per shape: standard normal (seeded) for floating dtypes, zeros for integers and bool (index 0
    is valid for every embedding); empty on the meta device."""
    for shape in shapes:
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ProbeError(f"input shape {tuple(shape)!r}: give one or more sizes >= 0, e.g. 6,20000,4")
    if torch.device(device).type == "meta":
        return [torch.empty(tuple(shape), dtype=dtype, device="meta") for shape, dtype in zip(shapes, dtypes)]
    generator = torch.Generator().manual_seed(seed)
    made = []
    for shape, dtype in zip(shapes, dtypes):
        if dtype.is_floating_point or dtype.is_complex:
            tensor = torch.randn(tuple(shape), generator=generator).to(dtype)
        else:
            tensor = torch.zeros(tuple(shape), dtype=dtype)
        made.append(tensor.to(device))
    return made


def to_meta(value: Any) -> Any:
    """``value`` with each tensor in it (in tuples, lists, dicts) replaced by an empty meta tensor like it."""
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, tuple) and hasattr(value, "_fields"):   # a named tuple
        return type(value)(*(to_meta(item) for item in value))
    if isinstance(value, (tuple, list)):
        return type(value)(to_meta(item) for item in value)
    if isinstance(value, dict):
        return {key: to_meta(item) for key, item in value.items()}
    return value


def one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
