"""The numpy globals a pickle of arrays may name, as the safe unpickler hands them out.

An array's bytes must come from the file: ``numpy.ndarray`` itself may not be called (its memory would be
whatever the heap held), ``_reconstruct`` always starts from an empty array that only BUILD with the file's
bytes can fill (charged to the reader's budget first), and ``numpy.dtype`` builds a stand-in whose state is
checked before a real dtype is made (numpy's own ``dtype.__setstate__`` on damaged state can crash the process).
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from ..errors import CheckpointFormatError
from .limits import Budget
from .rebuild import CURRENT_PATH, refuse_geometry, whole
from .standins import Allowed, Stub

_BYTE_ORDERS = ("<", ">", "|", "=")


def numpy_global(name: str, budget: Budget | None) -> Callable[..., Any]:
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    table: dict[str, Callable[..., Any]] = {
        "_reconstruct": _guard_reconstruct(multiarray._reconstruct, _filled_array_class(np, budget)),
        "_frombuffer": _guard_frombuffer(np),
        "scalar": lambda dtype, *data: multiarray.scalar(_real_dtype(dtype, np), *data),
        "ndarray": refuse_empty_array,
        "dtype": DtypeArgs,
    }
    return table[name]


def refuse_empty_array(*args: Any, **kwargs: Any) -> Any:
    raise CheckpointFormatError(f"{CURRENT_PATH[0]}: the pickle builds a numpy.ndarray without data from the file "
                                f"(numpy.ndarray called directly); refused, as its bytes would be whatever memory held")


class DtypeArgs:
    """``numpy.dtype(...)`` as the file asked for it; a real dtype is made from checked arguments when an array
    or scalar needs one. Its state (BUILD) may only say the byte order."""

    __slots__ = ("args", "order")

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.order = "="

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) > 1 and state[1] in _BYTE_ORDERS):
            raise pickle.UnpicklingError(f"numpy dtype state {_short(state)} is not a plain dtype's")
        self.order = state[1]


def _real_dtype(spec: Any, np: Any) -> Any:
    if not isinstance(spec, DtypeArgs) or not spec.args or not isinstance(spec.args[0], str) or len(spec.args) > 3:
        raise pickle.UnpicklingError(f"not a numpy dtype: {_short(spec)}")
    dtype = np.dtype(spec.args[0])
    if dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"numpy dtype {spec.args[0]!r} is structured; only plain dtypes are read")
    return dtype.newbyteorder(spec.order) if spec.order in "<>" else dtype


def _short(value: Any, limit: int = 60) -> str:
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _guard_reconstruct(reconstruct: Callable[..., Any], filled: type) -> Callable[..., Any]:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') then BUILD with its shape, dtype and bytes;
    # the empty shape is forced, so an array the file never fills holds nothing rather than heap contents.
    def rebuild(cls: Any, shape: Any = (0,), dtype: Any = b"b", *rest: Any) -> Any:
        if not (isinstance(cls, Allowed) and cls.func is refuse_empty_array):
            return Stub()
        return reconstruct(filled, (0,), b"b")
    return rebuild


def _filled_array_class(np: Any, budget: Budget | None) -> type:
    """An ndarray whose BUILD checks the state and charges the bytes it will hold before numpy allocates them."""
    def __setstate__(self: Any, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise refuse_geometry("numpy state", state)
        shape, dtype = state[-4], _real_dtype(state[-3], np)
        if not isinstance(shape, tuple) or not all(whole(d) for d in shape):
            raise refuse_geometry("numpy shape", shape)
        count = 1
        for dim in shape:
            count *= dim
        if budget is not None:
            budget.allocate(count * max(dtype.itemsize, 1))
        np.ndarray.__setstate__(self, (*state[:-3], dtype, *state[-2:]))

    # Named and placed as numpy's own, so it reads as an ndarray everywhere else.
    return type("ndarray", (np.ndarray,), {"__setstate__": __setstate__, "__module__": "numpy"})


def _guard_frombuffer(np: Any) -> Callable[..., Any]:
    # Protocol 5 pickles of contiguous arrays: numpy's _frombuffer(buf, dtype, shape, order[, axis_order]).
    def rebuild(buf: Any, dtype: Any, shape: Any, order: Any = "C", axis_order: Any = None) -> Any:
        dtype = _real_dtype(dtype, np)
        if dtype.hasobject or order not in ("C", "F", "K"):
            return Stub()
        array = np.frombuffer(buf, dtype=dtype)
        if order == "K" and axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order="F" if order == "F" else "C")
    return rebuild
