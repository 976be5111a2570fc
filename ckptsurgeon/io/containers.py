"""Finding the state dict inside whatever a checkpoint file unpickled to.

A file may hold a plain state dict, a dict of containers (``{'model': sd, 'ema': sd, 'optimizer': ...}``),
a whole pickled ``nn.Module`` (real or an inert stand-in), or a mix. Candidates are listed by dotted path
and chosen by a documented order; wrapper prefixes (``module.``, ``_orig_mod.``) are stripped only when
every key carries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Iterator

from ..errors import CheckpointFormatError, ContainerError
from .limits import Budget
from .refs import TensorRef
from .standins import Stub

# Chosen first to last; anything else found comes after, in file order.
PREFERRED_CONTAINERS = ("state_dict", "model", "model_state_dict", "module", "net", "network",
                        "params", "weights", "student", "generator")
EMA_CONTAINERS = frozenset({"ema", "model_ema", "ema_state_dict", "state_dict_ema", "ema_model",
                            "ema_params", "shadow"})
# Never state dicts of the model even when their inner dicts hold tensors.
SKIPPED_CONTAINERS = frozenset({"optimizer", "optimizers", "optimizer_states", "optimizer_state_dict",
                                "lr_scheduler", "scheduler", "lr_schedulers", "scaler", "grad_scaler"})
MAX_DEPTH = 4


@dataclass(frozen=True)
class Candidate:
    """One state dict found in the file."""

    path: str                     # dotted path from the root; "" is the root itself
    kind: str                     # "state_dict" or "module"
    tensors: dict[str, Any]       # name -> TensorRef / ndarray / torch.Tensor, in file order

    @property
    def is_ema(self) -> bool:
        return any(part in EMA_CONTAINERS for part in self.path.split("."))


NUMERIC_KINDS = frozenset("biufc")  # numpy dtype kinds torch can hold: bool, ints, floats, complex


def is_tensor_like(value: Any) -> bool:
    if isinstance(value, TensorRef):
        return True
    module = type(value).__module__
    if not (module.startswith(("torch", "numpy")) and hasattr(value, "shape") and hasattr(value, "dtype")):
        return False
    # numpy arrays of strings or objects (class names, metadata) are not tensors
    return not module.startswith("numpy") or getattr(value.dtype, "kind", None) in NUMERIC_KINDS


def is_module_like(value: Any) -> bool:
    if not isinstance(value, Stub) and all(callable(getattr(type(value), name, None))
                                           for name in ("state_dict", "named_parameters", "named_modules")):
        return True  # a real nn.Module (trusted loads only), including TorchScript modules
    state = getattr(value, "__dict__", None)
    return isinstance(state, dict) and isinstance(state.get("_modules"), Mapping) \
        and isinstance(state.get("_parameters"), Mapping)


def module_state(module: Any, budget: Budget | None = None) -> dict[str, Any]:
    """The state dict of a module (real or stand-in) from its ``_parameters``/``_buffers``/``_modules``.

    Follows ``nn.Module.state_dict``: own parameters, then persistent buffers, then children in
    registration order; ``None`` entries and non-persistent buffers are left out. A module shared under
    several names is listed under each (as torch does); every entry is charged to ``budget``, and a module
    that contains itself is refused.
    """
    if not isinstance(module, Stub) and hasattr(module, "state_dict") and callable(module.state_dict):
        return dict(module.state_dict())
    out: dict[str, Any] = {}
    budget = budget or Budget("<modules>")
    on_path: set[int] = set()
    # Iterative depth-first walk (50k nested modules must not exhaust the stack); an id marks leaving a module.
    stack: list[Any] = [(module, "", 0)]
    while stack:
        item = stack.pop()
        if isinstance(item, int):
            on_path.discard(item)
            continue
        current, prefix, depth = item
        budget.descend(depth)
        if id(current) in on_path:
            raise CheckpointFormatError(f"{budget.path}: module '{prefix.rstrip('.')}' contains itself (a cycle); "
                                        f"the file is damaged or hostile")
        on_path.add(id(current))
        stack.append(id(current))
        children = _collect_own(current, prefix, out, budget)
        stack.extend((child, f"{prefix}{name}.", depth + 1) for name, child in reversed(children))
    return out


def _collect_own(module: Any, prefix: str, out: dict[str, Any], budget: Budget) -> list[tuple[Any, Any]]:
    """A module's own tensors into ``out``; returns its module children in order."""
    state = module.__dict__
    parameters = _mapping(state.get("_parameters"))
    buffers = _mapping(state.get("_buffers"))
    modules = _mapping(state.get("_modules"))
    budget.visit(1 + len(parameters) + len(buffers) + len(modules))
    for name, value in parameters.items():
        if is_tensor_like(value):
            out[prefix + str(name)] = value
    if buffers:
        skipped = state.get("_non_persistent_buffers_set") or ()
        skipped = skipped if isinstance(skipped, (set, frozenset, list, tuple)) else ()
        for name, value in buffers.items():
            if is_tensor_like(value) and name not in skipped:
                out[prefix + str(name)] = value
    return [(name, child) for name, child in modules.items() if child is not None and is_module_like(child)]


def _mapping(value: Any) -> Mapping[Any, Any]:
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def _as_state_dict(value: Any) -> dict[str, Any] | None:
    """The tensors of a mapping that is a state dict (str keys, tensors and nothing nested), else None."""
    if not isinstance(value, Mapping) or not value:
        return None
    tensors: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, Mapping) or is_module_like(item) or _stub_mapping(item):
            return None
        if is_tensor_like(item):
            tensors[key] = item
    return tensors or None


def _stub_mapping(value: Any) -> bool:
    return isinstance(value, Stub) and "_stub_items" in value.__dict__


def find_candidates(root: Any, budget: Budget | None = None) -> list[Candidate]:
    """Every state dict in the unpickled object, in file order. A shared object is looked into once (a state
    dict reached again is listed again at no cost), so the walk costs what the file holds, not what it reaches."""
    return list(_walk(root, "", 0, budget or Budget("<object>"), {}))


def _walk(value: Any, path: str, depth: int, budget: Budget, seen: dict[int, Any]) -> Iterator[Candidate]:
    budget.visit()
    key = id(value)
    if key in seen:
        found = seen[key]
        if found is not None:
            yield Candidate(path, *found)
        return
    seen[key] = None
    if is_module_like(value):
        tensors = module_state(value, budget)
        if tensors:
            seen[key] = ("module", tensors)
            yield Candidate(path, "module", tensors)
        return
    if _stub_mapping(value):
        value = value.__dict__["_stub_items"]  # a dict subclass from an unknown module: its items
    if isinstance(value, Mapping):
        budget.visit(len(value))
    state_dict = _as_state_dict(value)
    if state_dict is not None:
        seen[key] = ("state_dict", state_dict)
        yield Candidate(path, "state_dict", state_dict)
        return
    if not isinstance(value, Mapping) or depth >= MAX_DEPTH:
        return
    for name, item in value.items():
        if isinstance(name, str) and name not in SKIPPED_CONTAINERS:
            yield from _walk(item, f"{path}.{name}" if path else name, depth + 1, budget, seen)


def _rank(candidate: Candidate, position: int) -> tuple[int, int, int]:
    head = candidate.path.split(".")[0]
    preferred = PREFERRED_CONTAINERS.index(head) if head in PREFERRED_CONTAINERS else len(PREFERRED_CONTAINERS)
    return (int(candidate.is_ema), preferred if candidate.path else -1, position)


def choose_candidate(candidates: list[Candidate], wanted: str | None, source: str) -> tuple[Candidate, str]:
    """Pick the container to use and say why.

    Order: the root state dict, then ``state_dict``, ``model`` and the other usual names, then the rest
    in file order; EMA copies only when asked for by name, or when nothing else holds tensors.
    """
    if not candidates:
        raise ContainerError(f"{source}: no tensors found in this file")
    if wanted is not None:
        for candidate in candidates:
            if candidate.path == wanted:
                return candidate, f"container '{wanted}' chosen with --container"
        listing = ", ".join(c.path or "<root>" for c in candidates)
        raise ContainerError(f"{source}: no container '{wanted}'; this file holds: {listing} "
                             f"(see `ckptsurgeon inspect --containers`)")
    ranked = sorted(enumerate(candidates), key=lambda pair: _rank(pair[1], pair[0]))
    best = ranked[0][1]
    if best.is_ema:
        return best, f"container '{best.path}' chosen: only EMA weights hold tensors in this file"
    if len(candidates) == 1:
        return best, f"container '{best.path or '<root>'}' is the only state dict in the file"
    others = ", ".join(c.path or "<root>" for c in candidates if c is not best)
    return best, f"container '{best.path or '<root>'}' chosen before {others} (pick another with --container)"
