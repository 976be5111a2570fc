"""The objects a pickle gets instead of what it names: inert stand-ins for unknown globals, small stand-ins for
``OrderedDict``, torch dtypes and storage classes, and :class:`Allowed`, the wrapper every allow-listed global
is handed out in (fresh per reference, refusing BUILD, charging its calls to the reader's budget).
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from ..specs import STORAGE_DTYPE
from .limits import Budget


class PlainOrderedDict(dict[Any, Any]):
    """Stands for ``collections.OrderedDict``: insertion-ordered too, and smaller (a pickled tensor carries one
    for its hooks, so 100k tensors make 100k of them); takes attributes such as a state dict's ``_metadata``."""

    _budget: Budget | None = None   # set on the per-reader subclass

    def __setstate__(self, state: Any) -> None:
        _charge(self._budget, state)
        _set_state(self.__dict__, state)


class DtypeName(str):
    """Stands for a ``torch.<dtype>`` global (``torch.float16``) without importing torch."""


class StorageType:
    """Stands for a ``torch.FloatStorage``-style class; only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPE.get(name, "uint8")


class Stub:
    """Base of the inert stand-ins for globals that are not on the allow-list.

    Instances accept any construction, state and items and keep them as plain data; calling one
    returns another inert instance. Nothing from the file is ever executed.
    """

    stub_global = "?"
    _budget: Budget | None = None   # set on the per-reader stand-in classes

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        if cls._budget is not None:
            cls._budget.build(1 + len(args) + len(kwargs))
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "Stub":
        return type(self)(*args)

    def __setstate__(self, state: Any) -> None:
        _charge(self._budget, state)
        if not _set_state(self.__dict__, state) and state is not None:
            self.__dict__["_stub_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        _charge(self._budget, None)
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value: Any) -> None:
        _charge(self._budget, None)
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values: Any) -> None:
        _charge(self._budget, values)
        self.__dict__.setdefault("_stub_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.stub_global}>"


def _charge(budget: Budget | None, state: Any) -> None:
    if budget is not None:
        budget.build(1 + (len(state) if isinstance(state, (tuple, list, dict, set, frozenset)) else 0))


def _set_state(target: dict[str, Any], state: Any) -> bool:
    """What pickle's BUILD does to an instance dict (state dict, or (state, slots)); False if not of that form."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state, slots = state
        target.update({k: v for k, v in slots.items() if isinstance(k, str)})
    if isinstance(state, dict):
        target.update({k: v for k, v in state.items() if isinstance(k, str)})
        return True
    return False


class Allowed:
    """An allow-listed global as a file sees it: callable, and nothing else. A fresh one per reference, so
    BUILD (``__setstate__``) or attribute writes can never reach the function or class behind it."""

    __slots__ = ("name", "func", "budget")
    name: str
    func: Callable[..., Any]
    budget: Budget | None

    def __init__(self, name: str, func: Callable[..., Any], budget: Budget | None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "func", func)
        object.__setattr__(self, "budget", budget)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        budget = self.budget
        if budget is not None:
            budget.objects += 1 + len(args) + len(kwargs)
            if budget.objects > budget.max_objects:
                budget.build(0)
        return self.func(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"the file sets attribute {name!r} on the allowed global {self.name}; refused")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"the file sets state (BUILD) on the allowed global {self.name}; "
                                     f"a file may set state only on its own objects")

    def __repr__(self) -> str:
        return f"<allowed {self.name}>"


def direct(func: Callable[..., Any]) -> type:
    """An Allowed class whose call is ``func`` itself (one frame less): for fixed-argument functions only."""
    return type(func.__name__, (Allowed,), {"__slots__": (), "__call__": staticmethod(func)})


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
