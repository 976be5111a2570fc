"""verify: does the migrated model still compute what the pretrained one did, and where does it stop?

Both models run in eval mode under ``torch.no_grad()`` on the same inputs. Forward hooks record the output
of every original module that the transfer plan pairs with a module of the modified model
(:mod:`.pairing`); the modified model's hooks compare, call by call, in the order its modules finish. A
module paired through a resized ``weight`` is compared on the output channels the resize kept. An inserted
module has no partner: what it returns is compared with what it was given (what the original passed on at
that point). The relative error is ``max |delta| / max |reference|``.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..plan import Plan, Step
from .inputs import random_inputs
from .pairing import ModulePairs, module_pairs

DEFAULT_TOLERANCE = 1e-4
CONSTANT_SCALE = 1e-3   # an inserted module whose output/input ratio varies less than this scales by a constant


@dataclass(frozen=True)
class Difference:
    """One comparison: a module's output at one call (or a final output), and how far it is off."""

    name: str                   # the modified model's module (or ``output[0]`` for final outputs)
    partner: str | None         # the original's module; None for an inserted module (compared with its input)
    call: int
    shape: tuple[int, ...]      # what was compared (the overlap where shapes differ)
    max_abs: float
    rel_error: float
    exceeds: bool
    note: str = ""

    @property
    def inserted(self) -> bool:
        return self.partner is None


@dataclass(frozen=True)
class Verification:
    """Per-module differences in execution order, the final outputs', and where the function first changed."""

    modules: tuple[Difference, ...]
    outputs: tuple[Difference, ...]
    tolerance: float
    inserted: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The final outputs agree within the tolerance."""
        return not any(output.exceeds for output in self.outputs)

    @property
    def first_divergence(self) -> Difference | None:
        return next((module for module in self.modules if module.exceeds), None)

    def as_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"ok": self.ok, "tolerance": self.tolerance,
                "first_divergence": first.name if first else None,
                "modules": [_difference_dict(d) for d in self.modules],
                "outputs": [_difference_dict(d) for d in self.outputs],
                "inserted": list(self.inserted), "notes": list(self.notes)}


def _difference_dict(difference: Difference) -> dict[str, Any]:
    data = asdict(difference)
    data["shape"] = list(difference.shape)
    for key in ("max_abs", "rel_error"):
        if math.isinf(data[key]) or math.isnan(data[key]):
            data[key] = str(data[key])
    return data


def verify(original: nn.Module, modified: nn.Module, *, plan: Plan | None = None,
           inputs: Sequence[torch.Tensor] | None = None, input_shapes: Sequence[Sequence[int]] = (),
           seed: int = 0, tolerance: float = DEFAULT_TOLERANCE) -> Verification:
    """Run both models on the same inputs and compare them module by module.

    Args:
        original: the pretrained architecture with the source weights.
        modified: the new architecture with the transferred weights.
        plan: the transfer plan that pairs their modules (default: planned from their state dicts, as
            ``transfer`` does with no options).
        inputs: positional inputs; or ``input_shapes``: random normal inputs of these shapes (seeded).
        tolerance: a relative error above this is a difference.
    """
    if plan is None:
        plan = _plan_between(original, modified)
    args = list(inputs) if inputs is not None else random_inputs(input_shapes, seed, _float_dtype(modified))
    pairs = module_pairs(plan, _types(modified), _types(original))
    reference, final_reference = _record(original, set(pairs.pairs.values()), args)
    recorder = _Comparer(modified, pairs, reference, tolerance)
    final = recorder.run(args)
    outputs = tuple(_compare_outputs(final_reference, final, tolerance, list(pairs.resized.values())))
    changed = [name for name in pairs.inserted if any(d.exceeds for d in recorder.differences if d.name == name)]
    notes = recorder.notes + [_identity_hint(modified, name) for name in changed]
    return Verification(tuple(recorder.differences), outputs, tolerance, pairs.inserted, tuple(notes))


def _identity_hint(model: nn.Module, name: str) -> str:
    """Whether an inserted module that changes the function could start as the identity (tried on a copy)."""
    from .identity import make_identity

    result = make_identity(copy.deepcopy(model.get_submodule(name)))
    if result.ok:
        return f"{name}: --init '{name}=identity' starts it as the identity ({result.kind})"
    return f"{name}: no weights make it the identity: {result.reason}"


def _plan_between(original: nn.Module, modified: nn.Module) -> Plan:
    from ..match.planner import plan_with_options
    from ..options import PlanOptions
    from ..resize import suggest_resize
    from ..specs import specs_of
    from .tied import tied_groups

    source, target, tied = specs_of(original.state_dict()), specs_of(modified.state_dict()), tied_groups(modified)
    plan = plan_with_options(source, target, PlanOptions(), tied)
    # a tensor whose shape changed was resized by the transfer, most likely as suggested: compare on that
    resize = tuple(f"re:^{re.escape(u.place)}$={method}" for u in plan.unused if u.place is not None
                   and (method := suggest_resize(u.shape, target[u.place].shape)) is not None)
    return plan_with_options(source, target, PlanOptions(resize=resize), tied) if resize else plan


def _types(model: nn.Module) -> dict[str, str]:
    return {path: type(module).__name__ for path, module in model.named_modules()}


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def leaves(value: Any, path: str = "output") -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in a nested output: tensors, tuples, lists and dicts of them."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}[{key!r}]")


def _detached(value: Any) -> list[tuple[str, torch.Tensor]]:
    return [(path, tensor.detach().clone()) for path, tensor in leaves(value)]


def _record(model: nn.Module, names: set[str], args: list[torch.Tensor]
            ) -> tuple[dict[str, list[list[tuple[str, torch.Tensor]]]], list[tuple[str, torch.Tensor]]]:
    """Every call's output of the named modules, and the model's final output."""
    recorded: dict[str, list[list[tuple[str, torch.Tensor]]]] = {name: [] for name in names}
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(_appender(recorded[name])) for name in names]
    try:
        final = _run(model, args)
    finally:
        for handle in handles:
            handle.remove()
    return recorded, _detached(final)


def _appender(calls: list[list[tuple[str, torch.Tensor]]]) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        calls.append(_detached(output))
    return hook


def _run(model: nn.Module, args: list[torch.Tensor]) -> Any:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*args)
    finally:
        model.train(was_training)


class _Comparer:
    """Hooks on the modified model that compare each call with the original's, as modules finish."""

    def __init__(self, model: nn.Module, pairs: ModulePairs, reference: dict[str, list[list[tuple[str, torch.Tensor]]]],
                 tolerance: float) -> None:
        self.model, self.pairs, self.reference, self.tolerance = model, pairs, reference, tolerance
        self.differences: list[Difference] = []
        self.notes: list[str] = []
        self.calls: dict[str, int] = {}

    def run(self, args: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        modules = dict(self.model.named_modules())
        handles = [modules[name].register_forward_hook(self._paired_hook(name)) for name in self.pairs.pairs]
        handles += [modules[name].register_forward_hook(self._inserted_hook(name)) for name in self.pairs.inserted]
        try:
            return _detached(_run(self.model, args))
        finally:
            for handle in handles:
                handle.remove()

    def _call_index(self, name: str) -> int:
        index = self.calls.get(name, 0)
        self.calls[name] = index + 1
        return index

    def _paired_hook(self, name: str) -> Any:
        partner = self.pairs.pairs[name]

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = self._call_index(name)
            calls = self.reference.get(partner, [])
            if call >= len(calls):
                self.notes.append(f"{name} ran more often than {partner} in the original (call {call + 1})")
                return
            reference, calls[call] = calls[call], []   # compared once: let the memory go
            self.differences.append(self._compare(name, partner, call, reference, list(leaves(output))))
        return hook

    def _compare(self, name: str, partner: str, call: int, reference: list[tuple[str, torch.Tensor]],
                 output: list[tuple[str, torch.Tensor]]) -> Difference:
        if len(reference) != len(output):
            return Difference(name, partner, call, (), math.inf, math.inf, True,
                              f"returns {len(output)} tensors, the original {len(reference)}")
        resized = self.pairs.resized.get(name)
        steps = [resized] if resized is not None else []
        worst: tuple[float, float, tuple[int, ...], str] = (0.0, 0.0, (), "")
        peak_delta, peak_reference = 0.0, 0.0
        for (_, whole_ref), (_, whole_out) in zip(reference, output):
            ref, out, note = _overlap(whole_ref, whole_out, steps)
            if ref is None or out is None:
                return Difference(name, partner, call, (), math.inf, math.inf, True, note)
            delta = _max_abs(out.float() - ref.float())
            peak_delta, peak_reference = max(peak_delta, delta), max(peak_reference, _max_abs(ref))
            if delta >= worst[0]:
                worst = (delta, 0.0, tuple(out.shape), note)
        rel = _relative(peak_delta, peak_reference)
        return Difference(name, partner, call, worst[2], peak_delta, rel, rel > self.tolerance, worst[3])

    def _inserted_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            call = self._call_index(name)
            given = next((t for _, t in leaves(args)), None)
            returned = next((t for _, t in leaves(output)), None)
            self.differences.append(_inserted_difference(name, call, given, returned, self.tolerance))
        return hook


def _inserted_difference(name: str, call: int, given: torch.Tensor | None, returned: torch.Tensor | None,
                         tolerance: float) -> Difference:
    if given is None or returned is None:
        return Difference(name, None, call, (), math.nan, math.nan, False, "inserted: no tensor in or out to compare")
    if given.shape != returned.shape:
        return Difference(name, None, call, tuple(returned.shape), math.inf, math.inf, True,
                          f"inserted: changes the shape {tuple(given.shape)} -> {tuple(returned.shape)}")
    delta = _max_abs(returned.float() - given.float())
    rel = _relative(delta, _max_abs(given))
    note = "inserted: compared with its input" + _scale_note(given, returned)
    return Difference(name, None, call, tuple(returned.shape), delta, rel, rel > tolerance, note)


def _scale_note(given: torch.Tensor, returned: torch.Tensor) -> str:
    """``; multiplies its input by 0.500`` when the output is its input times one constant."""
    given, returned = given.double(), returned.double()
    mask = given.abs() > given.abs().max() * 1e-3
    if not bool(mask.any()):
        return ""
    ratio = returned[mask] / given[mask]
    mean = float(ratio.mean())
    if mean == 0 or float(ratio.std()) > CONSTANT_SCALE * abs(mean) or abs(mean - 1) < CONSTANT_SCALE:
        return ""
    return f"; multiplies its input by {mean:.3f}"


def _overlap(ref: torch.Tensor, out: torch.Tensor, steps: Sequence[Step] = ()
             ) -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """The parts of two outputs that should agree: all of them, the channels a resize (one of ``steps``)
    kept, or the leading overlap."""
    if ref.shape == out.shape:
        return ref, out, ""
    if ref.dim() != out.dim():
        return None, None, f"shapes {tuple(out.shape)} and {tuple(ref.shape)} (original) cannot be compared"
    for resize in steps:
        dim = _channel_dim(ref.shape, out.shape, (resize.source_shape or (0,))[0], resize.target_shape[0])
        if dim is not None and resize.method:
            kept = _kept_rows(resize)
            rows = torch.nonzero(kept >= 0).flatten()
            new, dropped = out.shape[dim] - len(rows), ref.shape[dim] - len(rows)
            return (ref.index_select(dim, kept[rows]), out.index_select(dim, rows),
                    f"compared on the {len(rows)} channels {resize.method} kept"
                    + (f"; {new} new" if new else "") + (f"; {dropped} of the original's left out" if dropped else ""))
    common = tuple(min(a, b) for a, b in zip(ref.shape, out.shape))
    index = tuple(slice(0, n) for n in common)
    return ref[index], out[index], f"compared on the overlap {common}"


def _kept_rows(step: Step) -> torch.Tensor:
    """Target row -> the source row it came from (-1: not from the source), by resizing row indices."""
    from ..resize import resize_tensor

    assert step.source_shape is not None and step.method is not None   # a resize step has both
    rows = torch.arange(step.source_shape[0], dtype=torch.float64)
    source = rows.view(-1, *([1] * (len(step.source_shape) - 1))).expand(*step.source_shape).clone()
    base = torch.full(step.target_shape, -1.0, dtype=torch.float64)
    resized = resize_tensor(step.method, source, base)
    return resized.reshape(step.target_shape[0], -1)[:, 0].round().long()


def _channel_dim(ref: torch.Size, out: torch.Size, source_rows: int, target_rows: int) -> int | None:
    for dim in range(len(ref)):
        if ref[dim] == source_rows and out[dim] == target_rows and \
                all(ref[d] == out[d] for d in range(len(ref)) if d != dim):
            return dim
    return None


def _compare_outputs(reference: list[tuple[str, torch.Tensor]], outputs: list[tuple[str, torch.Tensor]],
                     tolerance: float, resized: Sequence[Step]) -> Iterator[Difference]:
    by_path = dict(reference)
    for path, out in outputs:
        ref = by_path.get(path)
        if ref is None:
            yield Difference(path, None, 0, tuple(out.shape), math.inf, math.inf, True, "the original has no such output")
            continue
        ref_part, out_part, note = _overlap(ref, out, resized)
        if ref_part is None or out_part is None:
            yield Difference(path, path, 0, tuple(out.shape), math.inf, math.inf, True, note)
            continue
        delta = _max_abs(out_part.float() - ref_part.float())
        rel = _relative(delta, _max_abs(ref_part))
        yield Difference(path, path, 0, tuple(out_part.shape), delta, rel, rel > tolerance, note)
    for path in by_path.keys() - {path for path, _ in outputs}:
        yield Difference(path, path, 0, (), math.inf, math.inf, True, "missing: the modified model does not return it")


def _max_abs(tensor: torch.Tensor) -> float:
    if tensor.numel() == 0:
        return 0.0
    if not tensor.is_floating_point():
        tensor = tensor.double()
    return float(tensor.abs().max())


def _relative(delta: float, reference: float) -> float:
    if delta == 0:
        return 0.0
    return delta / reference if reference > 0 else math.inf
