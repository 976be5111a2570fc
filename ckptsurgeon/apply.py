"""Running a plan: the only step that touches tensor values.

Each needed source tensor is read once, cast to the target dtype, resized or initialised as its step says.
Into a live model the result is loaded with ``strict=True``; into a file it is streamed tensor by tensor.
"""

from __future__ import annotations

import functools
import zlib
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import MappingError
from .init import IDENTITY
from .plan import COMPUTE, COPY, DEFAULT_SEED, INIT, KEEP_TARGET, RESIZE, ModuleStart, Plan, Step, is_bookkeeping

if TYPE_CHECKING:
    import torch


def step_generator(seed: int | None, name: str) -> torch.Generator:
    """A generator seeded by (seed, key): a key's values do not depend on which other keys are new."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(((DEFAULT_SEED if seed is None else seed) * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return generator


def _dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name)
    if not isinstance(dtype, torch.dtype):
        raise MappingError(f"{name!r} is not a torch dtype (a damaged plan)")
    return dtype


Sources = Mapping[str, "torch.Tensor"] | Sequence[Mapping[str, "torch.Tensor"]]


def tensor_for_step(step: Step, source: Sources, initial: Callable[[], torch.Tensor],
                    seed: int | None) -> torch.Tensor:
    """The value the target key gets. ``source`` is the source (a transfer) or the list of inputs (a surgery
    command; a step's sources index it); ``initial()`` returns the target's own initial tensor."""
    inputs = _inputs(source)
    if step.action == COPY:
        return _read(inputs, step)[0]().to(_dtype(step.target_dtype))
    if step.action == COMPUTE:
        from .operations import run_operation

        return run_operation(step.method or "", _read(inputs, step)).to(_dtype(step.target_dtype))
    if step.action == RESIZE:
        import torch

        from .resize import resize_tensor

        base = _initialised(step.fill or KEEP_TARGET, step, initial, seed)
        tensor = _read(inputs, step)[0]()
        # Resize in the wider dtype: an fp16 source must not round the target values a resize keeps.
        common = torch.promote_types(tensor.dtype, base.dtype)
        method = step.method or ""   # a resize step always names its method
        return resize_tensor(method, tensor.to(common), base.to(common)).to(_dtype(step.target_dtype))
    if step.action == INIT:
        return _initialised(step.method or KEEP_TARGET, step, initial, seed)
    raise MappingError(f"{step.target}: unknown plan action {step.action!r}")


def _inputs(source: Sources) -> Sequence[Mapping[str, torch.Tensor]]:
    return [source] if isinstance(source, Mapping) else source


def _read(inputs: Sequence[Mapping[str, torch.Tensor]], step: Step) -> list[Callable[[], torch.Tensor]]:
    """Loaders of the step's sources, in order (read when called, one at a time)."""
    if not step.sources:
        raise MappingError(f"{step.target}: a {step.action} step names no source tensor (a damaged plan)")
    return [functools.partial(inputs[index].__getitem__, key) for index, key in step.sources]


def _initialised(method: str, step: Step, initial: Callable[[], torch.Tensor], seed: int | None) -> torch.Tensor:
    like = initial()
    if method.partition(":")[0] == IDENTITY:
        if like.is_meta:
            raise MappingError(f"{step.target}: the target is on the meta device; an identity start sets some of a "
                               f"module's tensors from the others, so build the model on a real device")
        return like   # set with its module, once the whole state is loaded (start_identities)
    if method == KEEP_TARGET:
        if like.is_meta and is_bookkeeping(step.target):
            import torch

            return torch.zeros(like.shape, dtype=like.dtype)  # a counter that starts fresh starts at 0
        if like.is_meta:
            raise MappingError(f"{step.target}: the target is on the meta device, so it has no initial values for "
                               f"this new tensor; give one with --init '{step.target}=normal' (or zeros, ones, ...)")
        return like
    from .init import initialize

    if like.is_meta:
        import torch

        like = torch.empty(like.shape, dtype=like.dtype)
    return initialize(method, like, step_generator(seed, step.target))


def apply_to_model(plan: Plan, source: Mapping[str, torch.Tensor], model: torch.nn.Module, *,
                   seed: int | None = None) -> tuple[ModuleStart, ...]:
    """Load the planned tensors into ``model`` with ``strict=True`` (meta-device models get ``assign=True``),
    then start the modules an ``identity`` rule names as the identity; returns what each of those did."""
    _load(plan, source, model, seed)
    return start_identities(plan, model)


def identity_modules(plan: Plan) -> list[str]:
    """The modules the plan starts as the identity, in target order."""
    methods = (step.method or "" for step in plan.steps if step.action == INIT)
    return list(dict.fromkeys(module for name, _, module in (m.partition(":") for m in methods) if name == IDENTITY))


def start_identities(plan: Plan, model: torch.nn.Module) -> tuple[ModuleStart, ...]:
    """Set each identity module's tensors from its structure (:func:`~ckptsurgeon.model.identity.identity_for`)."""
    modules = identity_modules(plan)
    if not modules:
        return ()
    from .model.identity import identity_for

    started = []
    for module in modules:
        result = identity_for(model, module)
        started.append(ModuleStart(module, result.kind, result.ok, result.reason, result.expected_error))
    return tuple(started)


def _load(plan: Plan, source: Mapping[str, torch.Tensor], model: torch.nn.Module, seed: int | None) -> None:
    current = model.state_dict()
    if any(tensor.is_meta for tensor in current.values()):
        _assign(plan, source, model, current, seed)
    elif _loads_plainly(model):
        _copy_in_place(plan, source, current, seed)
    else:   # custom loading hooks must see the whole state dict, as load_state_dict gives it to them
        new_state = {step.target: tensor_for_step(step, source, functools.partial(current.__getitem__, step.target),
                                                  seed) for step in plan.steps}
        model.load_state_dict(new_state, strict=True)


def _copy_in_place(plan: Plan, source: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor],
                   seed: int | None) -> None:
    """Tensor by tensor into the model's own storage (``copy_``): one new tensor in memory at a time, however
    many are cast or resized. Every key of the model gets one step, as ``strict=True`` loading requires."""
    import torch

    planned = {step.target for step in plan.steps}
    missing = next((name for name in current if name not in planned), None)
    if missing is not None or len(plan.steps) != len(current):
        raise MappingError(f"the plan does not cover the model's state dict (e.g. {missing!r}); plan against this "
                           f"model's own state dict")
    with torch.no_grad():
        for step in plan.steps:
            mine = current[step.target]
            value = tensor_for_step(step, source, functools.partial(current.__getitem__, step.target), seed)
            if value is not mine:
                mine.copy_(value)
            del value


def _loads_plainly(model: torch.nn.Module) -> bool:
    """Whether loading is a plain copy into each tensor: no module with its own loading logic or hooks (then
    ``load_state_dict`` runs them), and state-dict keys that are the tensors themselves."""
    for module in model.modules():
        if (module._load_state_dict_pre_hooks or module._load_state_dict_post_hooks or module._state_dict_hooks
                or module._state_dict_pre_hooks):
            return False
        if not type(module)._load_from_state_dict.__module__.startswith("torch.nn.modules"):
            return False
    return True


def _assign(plan: Plan, source: Mapping[str, torch.Tensor], model: torch.nn.Module,
            current: Mapping[str, torch.Tensor], seed: int | None) -> None:
    """A meta-device model gets the tensors as its own (``assign=True``): each a copy, so that training the model
    never writes into the source (a caller's state dict, or the checkpoint's memory map); a cast or resized
    tensor is new already. assign also unties tied weights, so they are tied again afterwards."""
    from .model.tied import retie, tied_groups

    new_state = {}
    for step in plan.steps:
        value = tensor_for_step(step, source, functools.partial(current.__getitem__, step.target), seed)
        fresh = step.action != COPY or step.is_cast
        new_state[step.target] = value if fresh else value.clone()
    tied = tied_groups(model)
    model.load_state_dict(new_state, strict=True, assign=True)
    retie(model, tied)


def write_plan(plan: Plan, source: Any, template: Any, output: str, *, seed: int | None = None,
               metadata: Mapping[str, str] | None = None, format: str | None = None,
               max_shard_size: int | str | None = None, force: bool = True) -> str:
    """Stream the planned target state dict into ``output``, one tensor at a time.

    ``source`` is the source checkpoint, or the list of inputs of a surgery command; ``template`` gives the
    target's initial values (a Checkpoint or a state dict; None when no step keeps one). Plain copies that
    keep their dtype, and kept initial values, go byte for byte from file to file without building a tensor.
    ``format``, ``max_shard_size`` and ``force`` as for :func:`~ckptsurgeon.io.writer.write_streamed`.
    """
    from .io.writer import write_streamed
    from .specs import TensorSpec

    if identity_modules(plan):
        raise MappingError(f"an identity start ({identity_modules(plan)[0]}) reads the module's structure: transfer "
                           f"into a live model (--model MODULE:CALLABLE), not a template checkpoint")

    specs = [TensorSpec(step.target, step.target_shape, step.target_dtype) for step in plan.steps]
    by_target = {step.target: step for step in plan.steps}
    inputs = _inputs(source)
    produce = {step.target: functools.partial(_produce, step, inputs, template, seed) for step in plan.steps}
    return write_streamed(output, specs, produce, metadata=metadata,
                          raw=lambda name: _raw_span(by_target[name], inputs, template), format=format,
                          max_shard_size=max_shard_size, force=force)


def _produce(step: Step, inputs: Sequence[Mapping[str, Any]], template: Any, seed: int | None) -> Any:
    def initial() -> Any:
        if template is None:
            raise MappingError(f"{step.target}: this plan keeps a target's own values, but there is no template")
        return template[step.target]
    return tensor_for_step(step, inputs, initial, seed)


def _raw_span(step: Step, inputs: Sequence[Any], template: Any) -> Any:
    """Where a plain copy's (or a kept initial value's) bytes lie in a file, or None."""
    if step.action == COPY and step.source_dtype == step.target_dtype:
        index, key = step.sources[0]
        if hasattr(inputs[index], "raw_span"):
            return inputs[index].raw_span(key)
    if step.action == INIT and step.method in (None, KEEP_TARGET) and hasattr(template, "raw_span"):
        return template.raw_span(step.target)
    return None
