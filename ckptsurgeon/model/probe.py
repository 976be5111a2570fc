"""probe: what a module takes and returns, by shape and dtype, and what each of its direct children returns.

The model runs once, in eval mode under ``torch.no_grad()``, with forward hooks that describe (never keep)
the module's positional and keyword arguments, its output, and the output of each direct child at each call
(:mod:`.nested`). The user's model is left as it was: no hook stays, every ``training`` flag is restored.

The meta device (``device="meta"``, the default) costs no tensor memory:
- a builder (a callable returning the model) is called under ``with torch.device("meta")``, so its
  parameters are never allocated;
- a model object is copied with :func:`copy_to_meta`: ``copy.deepcopy`` whose memo already maps every
  parameter, buffer and tensor attribute to a meta tensor of its shape and dtype, so the copy has the
  module structure and no tensor data (``model.to("meta")`` on a plain deepcopy would copy every weight
  first); the hooks go on the copy and the user's model is not run at all.
A forward that cannot run on meta (``.item()``, a branch on values, an op without a meta kernel, a CPU tensor
made inside ``forward``) is run again for real: a builder is built again normally, a model object is run
where its parameters are, with random inputs; :attr:`Probe.device` and :attr:`Probe.notes` say so.
"""

from __future__ import annotations

import copy
import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import nn

from .nested import Difference, Node, Where, Wording, compare_nodes, flatten
from ..errors import ProbeError as ProbeError
from .probe_run import ForwardFailed, Recorder, make_inputs, one_line, to_meta

__all__ = ["Probe", "ProbeError", "Stage", "StagePair", "compare_probes", "copy_to_meta", "find_module", "pair_stages",
           "probe"]

ModelOrBuilder = Union[nn.Module, Callable[[], nn.Module]]


@dataclass(frozen=True)
class Stage:
    """One call of a direct child of the probed module: its name, which call of it (1, 2, ...), its class
    and what it returned."""

    name: str
    call: int
    type_name: str
    output: Node

    @property
    def label(self) -> str:
        return self.name if self.call == 1 else f"{self.name} (call {self.call})"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "call": self.call, "class": self.type_name, "output": self.output.as_dict()}


@dataclass(frozen=True)
class Probe:
    """The interface of ``module`` seen in one forward: its inputs, its output and its children's outputs.

    ``calls`` is how often the forward called the module (the first call is described); ``not_called``
    lists the direct children that forward did not call; ``device`` is where it ran (``meta`` or the
    model's own device); ``notes`` say why it did not run on meta, and the like."""

    module: str
    type_name: str
    device: str
    into_module: bool
    args: Node
    kwargs: Node
    output: Node
    stages: tuple[Stage, ...]
    not_called: tuple[str, ...]
    calls: int
    notes: tuple[str, ...]

    def rows(self) -> list[tuple[str, Node]]:
        """The inputs and the output, each leaf by path (``input[0]``, ``output['p3']``): a table."""
        inputs = [flatten(node, Where("input")) for node in (self.args, self.kwargs) if node.items]
        return [row for rows in inputs for row in rows] + flatten(self.output, Where("output"))

    def as_dict(self) -> dict[str, Any]:
        return {"module": self.module, "class": self.type_name, "device": self.device,
                "into_module": self.into_module, "calls": self.calls,
                "inputs": {"args": self.args.as_dict()["items"], "kwargs": self.kwargs.as_dict()["items"]},
                "output": self.output.as_dict(), "stages": [stage.as_dict() for stage in self.stages],
                "not_called": list(self.not_called), "notes": list(self.notes)}


def probe(model: ModelOrBuilder, module: str = "", *, inputs: Sequence[Any] | None = None,
          input_kwargs: Mapping[str, Any] | None = None, input_shapes: Sequence[Sequence[int]] = (),
          dtype: torch.dtype | Sequence[torch.dtype] = torch.float32, seed: int = 0, into_module: bool = False,
          device: str | torch.device = "meta") -> Probe:
    """Run ``model`` once and describe what ``module`` (a dotted name; ``""`` = the whole model) takes and
    returns, and what each of its direct children returns, in call order.

    Args:
        model: an ``nn.Module``, or a callable building one (then built on meta without allocating).
        inputs: the positional inputs (tensors or nested values); or ``input_shapes`` for random ones, one
            shape per positional input, in ``dtype`` (one for all, or one per shape; integer inputs are 0).
        input_kwargs: keyword inputs, passed as they are (moved to meta for a meta run).
        into_module: feed the inputs to ``module`` itself instead of running the whole model.
        device: ``"meta"`` tries the meta device first; another device runs the model as it is, with the
            inputs made there.

    Raises:
        ProbeError: no such module (the closest names are given), the module not called by the forward, or a
            forward that raises wherever it ran (naming the innermost module that raised and its inputs).
    """
    if inputs is not None and input_shapes:
        raise ProbeError("give either inputs or input_shapes, not both")
    dtypes = _dtypes(dtype, len(input_shapes))
    notes: list[str] = []
    on_meta: ForwardFailed | None = None
    meta_model = _meta_model(model, notes) if torch.device(device).type == "meta" else None
    if meta_model is not None:
        args = to_meta(list(inputs)) if inputs is not None else make_inputs(input_shapes, dtypes, seed, "meta")
        try:
            return _run(meta_model, module, args, to_meta(dict(input_kwargs or {})), into_module, "meta", notes)
        except ForwardFailed as failure:
            on_meta = failure
    real = model if isinstance(model, nn.Module) else model()
    where = _device_of(real) if torch.device(device).type == "meta" else torch.device(device)
    if on_meta is not None:
        if where.type == "meta":
            raise ProbeError(f"the forward raises on the meta device {on_meta.summary()}, and the model is on the "
                             f"meta device; build it on cpu, or pass its builder so that it can be built there")
        notes.append(f"ran on {where}: the forward raises on the meta device {on_meta.summary()}")
    args = list(inputs) if inputs is not None else make_inputs(input_shapes, dtypes, seed, where)
    try:
        return _run(real, module, args, dict(input_kwargs or {}), into_module, str(where), notes)
    except ForwardFailed as failure:
        also = f" (and on the meta device first {on_meta.summary()})" if on_meta is not None else ""
        raise ProbeError(f"the forward raises on {where} {failure.summary()}{also}") from failure.error


def copy_to_meta(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the meta device that copies no tensor data: ``copy.deepcopy`` with a memo that
    already maps each parameter, buffer and tensor attribute to a meta tensor of the same shape and dtype
    (tied weights stay tied). The model itself is not changed."""
    memo: dict[int, Any] = {}
    tensors = itertools.chain(model.parameters(), model.buffers(),
                              (value for sub in model.modules() for value in vars(sub).values()))
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and id(tensor) not in memo \
                and not nn.parameter.is_lazy(tensor):
            meta = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def compare_probes(old: Probe, new: Probe) -> list[Difference]:
    """Every difference between ``new`` and the reference ``old``: inputs, output (structure, count, dtype,
    shape) and the children's outputs, paired by name and call (the rest by position)."""
    found = compare_nodes(old.args, new.args, Where("input"), "input", Wording("takes", "inputs", "keyword argument"))
    found += compare_nodes(old.kwargs, new.kwargs, Where("input"), "input",
                           Wording("takes", "inputs", "keyword argument"))
    found += compare_nodes(old.output, new.output, Where("output"), "output", Wording("returns", "outputs"))
    for pair in pair_stages(old, new):
        found += pair.differences()
    return found


@dataclass(frozen=True)
class StagePair:
    """A child stage of the old module and its counterpart in the new (``None`` when there is none),
    paired ``by`` name (and call) or by position among those whose names found no partner."""

    old: Stage | None
    new: Stage | None
    by: str

    @property
    def label(self) -> str:
        if self.old is not None and self.new is not None and self.by == "position":
            return f"{self.old.label} / {self.new.label}"
        stage = self.old or self.new
        assert stage is not None   # a pair holds at least one stage
        return stage.label

    def differences(self) -> list[Difference]:
        where = Where(self.label, label=f"stage {self.label}")
        if self.old is not None and self.new is not None:
            return compare_nodes(self.old.output, self.new.output, where, "stage", Wording("returns", "outputs"))
        stage = self.old or self.new
        assert stage is not None
        if stage.call > 1:
            why = f"the {'new' if self.old else 'old'} module calls {stage.name} fewer times"
        else:
            why = f"not called by the {'new' if self.old else 'old'} module"
        return [Difference("stage", self.label, "missing" if self.old else "new",
                           f"stage {self.label}: {'missing' if self.old else 'new'} ({why})")]


def pair_stages(old: Probe, new: Probe) -> list[StagePair]:
    """The old and new stages side by side, in the new module's call order (old-only ones where they fell)."""
    new_by_key = {(stage.name, stage.call): stage for stage in new.stages}
    old_keys = {(stage.name, stage.call) for stage in old.stages}
    old_left = [stage for stage in old.stages if (stage.name, stage.call) not in new_by_key]
    new_left = [stage for stage in new.stages if (stage.name, stage.call) not in old_keys]
    partner: dict[int, StagePair] = {}   # id of the new stage -> its pair
    for stage in old.stages:
        if (stage.name, stage.call) in new_by_key:
            partner[id(new_by_key[stage.name, stage.call])] = StagePair(stage, new_by_key[stage.name, stage.call], "name")
    for old_stage, new_stage in zip(old_left, new_left):
        partner[id(new_stage)] = StagePair(old_stage, new_stage, "position")
    placed = {id(pair.old) for pair in partner.values()}
    pending = [StagePair(stage, None, "name") for stage in old.stages if id(stage) not in placed]
    order = {id(stage): index for index, stage in enumerate(old.stages)}
    pairs: list[StagePair] = []
    for stage in new.stages:
        pair = partner.get(id(stage), StagePair(None, stage, "name"))
        if pair.old is not None:   # the old-only stages called before this one's partner go first
            before = order[id(pair.old)]
            pairs += [p for p in pending if order[id(p.old)] < before]
            pending = [p for p in pending if order[id(p.old)] > before]
        pairs.append(pair)
    return pairs + pending


def _run(root: nn.Module, module: str, args: list[Any], kwargs: dict[str, Any], into_module: bool, device: str,
         notes: list[str]) -> Probe:
    target = find_module(root, module)
    runner = target if into_module else root
    recorder = Recorder(target, module if into_module else "")
    flags = [(sub, sub.training) for sub in runner.modules()]
    handles = recorder.attach(runner)
    try:
        runner.eval()
        with torch.no_grad():
            recorder.run(runner, args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for sub, flag in flags:
            sub.training = flag
    if recorder.output is None or recorder.args is None or recorder.kwargs is None:
        raise ProbeError(f"the forward of {type(root).__name__} does not call {module!r}; "
                         f"feed the inputs to it directly with into_module=True (--into-module)")
    if recorder.calls > 1:
        notes.append(f"{module or 'the model'} was called {recorder.calls} times; the first call is shown")
    return Probe(module, type(target).__name__, device, into_module, recorder.args, recorder.kwargs, recorder.output,
                 tuple(Stage(*stage) for stage in recorder.stages), recorder.not_called(), recorder.calls,
                 tuple(notes))


def find_module(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule called ``name`` (dotted; ``""`` is the model); a ProbeError names the closest."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        pass
    names = [sub for sub, _ in model.named_modules() if sub]
    scored = sorted(((-difflib.SequenceMatcher(None, name, other).ratio(), index, other)
                     for index, other in enumerate(names)))   # closest first; ties in the model's order
    close = [other for score, _, other in scored[:3] if -score >= 0.5] or [child for child, _ in model.named_children()]
    listed = ", ".join(repr(item) for item in close[:8]) or "none"
    raise ProbeError(f"{type(model).__name__} has no module {name!r}; the closest names: {listed}")


def _meta_model(model: ModelOrBuilder, notes: list[str]) -> nn.Module | None:
    """The model on meta (see the module docstring); None, with a note, when it cannot be had."""
    try:
        if isinstance(model, nn.Module):
            return copy_to_meta(model)
        with torch.device("meta"):
            return model()
    except Exception as exc:   # user code: anything it raises means "not on meta"
        what = "copying the model to" if isinstance(model, nn.Module) else "building the model on"
        notes.append(f"ran on cpu: {what} the meta device failed ({type(exc).__name__}: {one_line(str(exc))})")
        return None


def _device_of(model: nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _dtypes(dtype: torch.dtype | Sequence[torch.dtype], count: int) -> list[torch.dtype]:
    if isinstance(dtype, torch.dtype):
        return [dtype] * count
    if len(dtype) == 1:
        return list(dtype) * count
    if len(dtype) != count:
        raise ProbeError(f"{len(dtype)} dtypes for {count} input shapes; give one dtype, or one per input shape")
    return list(dtype)
