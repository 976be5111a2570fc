"""A pickle reader that runs no code from the file.

Every global a pickle names goes through :meth:`SafeUnpickler.find_class`. Only a short allow-list of
container and tensor-rebuilding functions is honoured, and those are our own re-implementations that
record what a tensor is (:class:`TensorRef`) instead of building it. Everything else (model classes,
``os.system``, ``eval``, ``getattr`` ...) becomes an inert stand-in class that only stores what the pickle
hands it, so a whole pickled ``nn.Module`` still yields its ``_parameters`` / ``_buffers`` / ``_modules``.

Nothing a file does outlives the file: each allowed global is handed out as a fresh wrapper that refuses
BUILD (state), so a pickle can set state only on its own stand-ins, never on our functions or classes. Every
constructor charges what it builds and allocates to the reader's :class:`~ckptsurgeon.io.limits.Budget`.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from typing import Any, Callable

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE, STORAGE_DTYPE, dtype_name
from .limits import Budget
from .refs import StorageRef, TensorRef


class PlainOrderedDict(dict):
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


def _set_state(target: dict, state: Any) -> bool:
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


def _direct(func: Callable[..., Any]) -> type:
    """An Allowed class whose call is ``func`` itself (one frame less): for fixed-argument functions only."""
    return type(func.__name__, (Allowed,), {"__slots__": (), "__call__": staticmethod(func)})


def _refuse_geometry(what: str, value: Any) -> CheckpointFormatError:
    return CheckpointFormatError(f"{_CURRENT_PATH[0]}: a tensor's {what} is {_short_repr(value)}; "
                                 f"the file is damaged or not a checkpoint")


_CURRENT_PATH = ["<pickle>"]   # the file being read, for messages raised from inside the pickle machine


def _whole(value: Any) -> bool:
    return type(value) is int and value >= 0


def _whole_numbers(values: Any) -> bool:
    """A tuple or list of ints >= 0 (not bools), checked at C speed: 100k tensors pass through here."""
    return type(values) in (tuple, list) and (not values or (set(map(type, values)) == _INT_ONLY and min(values) >= 0))


_INT_ONLY = {int}


def _checked_geometry(storage: StorageRef, offset: Any, size: Any, stride: Any, dtype: str) -> tuple[tuple, tuple]:
    """Shape, stride and offset as torch would accept them, inside their storage (no tensor data read)."""
    if type(offset) is not int or offset < 0:
        raise _refuse_geometry("storage offset", offset)
    if not _whole_numbers(size):
        raise _refuse_geometry("shape", size)
    if not _whole_numbers(stride):
        raise _refuse_geometry("stride", stride)
    if len(stride) != len(size):
        raise _refuse_geometry(f"stride (for shape {tuple(size)})", stride)
    element = ELEMENT_SIZE.get(dtype, 1)
    storage_bytes = storage.numel * ELEMENT_SIZE.get(storage.dtype, 1)
    if storage_bytes % element:
        raise _refuse_geometry(f"storage ({storage.numel} {storage.dtype} for a {dtype} tensor)",
                               "not a multiple of the element size")
    last = offset
    for dim, step in zip(size, stride):
        if dim == 0:
            break
        last += (dim - 1) * step
    else:
        if (last + 1) * element > storage_bytes:
            raise _refuse_geometry(f"extent (shape {tuple(size)}, stride {tuple(stride)}, offset {offset}, storage "
                                   f"of {storage.numel} {storage.dtype})", "past its storage")
    return tuple(size), tuple(stride)


# The rebuild functions take fixed arguments (no *args): a call cannot copy a long tuple from the file, so they
# are called without the budget wrapper (see _direct); 100k tensors pass through them.
def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None, dtype: str | None = None) -> Any:
    if not isinstance(storage, StorageRef):
        return Stub()
    dtype = dtype or storage.dtype
    shape, strides = _checked_geometry(storage, offset, size, stride, dtype)
    return TensorRef(storage.key, offset, shape, strides, dtype, bool(requires_grad))


def _rebuild_tensor_v3(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, metadata: Any = None) -> Any:
    name = dtype_name(dtype) if isinstance(dtype, str) else None
    if name not in ELEMENT_SIZE:
        raise _refuse_geometry("dtype", dtype)
    return _rebuild_tensor(storage, offset, size, stride, requires_grad, dtype=name)


def _rebuild_parameter(data: Any, requires_grad: Any = True, hooks: Any = None, state: Any = None) -> Any:
    if isinstance(data, TensorRef):
        return data._replace(requires_grad=bool(requires_grad), is_parameter=True)
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    return func(*args) if callable(func) else Stub()


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    if isinstance(cls, type) and issubclass(cls, Stub):
        return cls.__new__(cls)
    if isinstance(cls, Allowed) and cls.name in ("collections.OrderedDict", "builtins.set"):
        return cls()
    return Stub()


def _allocating(budget: Budget | None) -> dict[str, Callable[..., Any]]:
    """The allowed constructors that allocate memory, charged to the reader's budget before they do."""
    def charge(nbytes: int) -> None:
        if budget is not None:
            budget.allocate(nbytes)

    def encode_latin1(text: Any, encoding: str = "latin1", *rest: Any) -> Any:
        # Python 2 era pickles spell bytes as _codecs.encode(str, 'latin1').
        if isinstance(text, str) and encoding in ("latin1", "latin-1"):
            charge(len(text))
            return text.encode("latin1")
        return Stub()

    def new_bytearray(source: Any = b"", *rest: Any) -> Any:
        if type(source) is int:
            charge(max(source, 0))
        elif isinstance(source, (bytes, bytearray, str, list, tuple)):
            charge(len(source))
        else:
            return Stub()
        return bytearray(source, *rest)

    def new_set(items: Any = ()) -> Any:
        charge(8 * len(items) if hasattr(items, "__len__") else 0)
        return set(items)

    def new_frozenset(items: Any = ()) -> Any:
        charge(8 * len(items) if hasattr(items, "__len__") else 0)
        return frozenset(items)

    return {"_codecs.encode": encode_latin1, "builtins.bytearray": new_bytearray, "builtins.set": new_set,
            "builtins.frozenset": new_frozenset}


def _numpy_global(name: str, budget: Budget | None) -> Callable[..., Any]:
    import numpy as np  # only pickles that hold numpy arrays pay for numpy

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    table: dict[str, Any] = {
        "_reconstruct": _guard_ndarray(multiarray._reconstruct, _filled_array_class(np, budget)),
        "_frombuffer": _guard_frombuffer(np),
        "scalar": multiarray.scalar,
        "ndarray": _refuse_empty_array,
        "dtype": np.dtype,
    }
    return table[name]


def _refuse_empty_array(*args: Any, **kwargs: Any) -> Any:
    raise CheckpointFormatError(f"{_CURRENT_PATH[0]}: the pickle builds a numpy.ndarray without data from the file "
                                f"(numpy.ndarray called directly); refused, as its bytes would be whatever memory held")


def _guard_ndarray(reconstruct: Callable[..., Any], filled: type) -> Callable[..., Any]:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') then BUILD with its shape, dtype and bytes;
    # the empty shape is forced, so an array the file never fills holds nothing rather than heap contents.
    def rebuild(cls: Any, shape: Any = (0,), dtype: Any = b"b", *rest: Any) -> Any:
        if not (isinstance(cls, Allowed) and cls.func is _refuse_empty_array):
            return Stub()
        return reconstruct(filled, (0,), dtype if isinstance(dtype, (bytes, str)) else b"b")
    return rebuild


def _filled_array_class(np: Any, budget: Budget | None) -> type:
    """An ndarray whose BUILD charges the bytes it will hold before numpy allocates them."""
    def __setstate__(self: Any, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse_geometry("numpy state", state)
        shape, dtype = state[-4], state[-3]
        if not isinstance(shape, tuple) or not all(_whole(d) for d in shape) or not isinstance(dtype, np.dtype):
            raise _refuse_geometry("numpy shape or dtype", (shape, dtype))
        count = 1
        for dim in shape:
            count *= dim
        if budget is not None:
            budget.allocate(count * max(dtype.itemsize, 1))
        np.ndarray.__setstate__(self, state)

    # Named and placed as numpy's own, so it reads as an ndarray everywhere else.
    return type("ndarray", (np.ndarray,), {"__setstate__": __setstate__, "__module__": "numpy"})


def _guard_frombuffer(np: Any) -> Callable[..., Any]:
    # Protocol 5 pickles of contiguous arrays: numpy's _frombuffer(buf, dtype, shape, order[, axis_order]).
    def rebuild(buf: Any, dtype: Any, shape: Any, order: Any = "C", axis_order: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F", "K"):
            return Stub()
        array = np.frombuffer(buf, dtype=dtype)
        if order == "K" and axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order="F" if order == "F" else "C")
    return rebuild


# Builtin types are immutable and cheap to build; the rest is handed out wrapped (see Allowed).
_BUILTIN_TYPES: dict[tuple[str, str], Any] = {
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
}
_ALLOCATING = frozenset({("_codecs", "encode"), ("builtins", "bytearray"), ("builtins", "set"),
                         ("builtins", "frozenset")})
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
}
_DIRECT: dict[tuple[str, str], type] = {
    ("copyreg", "_reconstructor"): _direct(_reconstructor),
    ("torch._utils", "_rebuild_tensor"): _direct(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _direct(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v3"): _direct(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _direct(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _direct(_rebuild_parameter),
}
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy", "numpy.core.numeric",
                  "numpy._core.numeric")
_NUMPY_NAMES = ("_reconstruct", "_frombuffer", "scalar", "ndarray", "dtype")


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 spellings that protocol 0-2 pickles use (``__builtin__``, ``commands``) -> Python 3 names."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class SafeUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's pickle without running any of its code.

    Args:
        file: the pickle stream.
        storage_key: turns a torch persistent id into the key of the record holding its bytes, or
            ``None`` for plain pickles (which then may not carry persistent ids).
    """

    def __init__(self, file: io.BufferedIOBase, storage_key: Callable[[tuple], str] | None = None, *,
                 remember_storages: bool = False, budget: Budget | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self._storage_key = storage_key
        self.stubbed: dict[str, int] = {}
        # Legacy files size their raw storages by the pickle's dtypes; zip files need no such record.
        self.storages: dict[str, StorageRef] | None = {} if remember_storages else None
        self._stub_classes: dict[str, type] = {}
        self.budget = budget
        self._odict = type("OrderedDict", (PlainOrderedDict,), {"_budget": budget})
        self._allocating = _allocating(budget)

    def load(self) -> Any:
        _CURRENT_PATH[0] = self.budget.path if self.budget is not None else "<pickle>"
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        module, name = _py3_name(module, name)
        if self.budget is not None:
            self.budget.build(1)
        if (module, name) in _BUILTIN_TYPES:
            return _BUILTIN_TYPES[(module, name)]
        if (module, name) == ("collections", "OrderedDict"):
            return Allowed("collections.OrderedDict", self._odict, self.budget)
        if (module, name) in _ALLOCATING:
            return Allowed(f"{module}.{name}", self._allocating[f"{module}.{name}"], self.budget)
        if (module, name) in _DIRECT:
            return _DIRECT[(module, name)](f"{module}.{name}", None, None)
        if (module, name) in _SAFE_GLOBALS:
            return Allowed(f"{module}.{name}", _SAFE_GLOBALS[(module, name)], self.budget)
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return DtypeName(_TORCH_DTYPES[name])
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return Allowed(f"numpy.{name}", _numpy_global(name, self.budget), self.budget)
        return self._stub_for(f"{module}.{name}")

    def _stub_for(self, qualname: str) -> type:
        self.stubbed[qualname] = self.stubbed.get(qualname, 0) + 1
        if qualname not in self._stub_classes:
            short = qualname.rsplit(".", 1)[-1] or "Stub"
            self._stub_classes[qualname] = type(short, (Stub,), {"stub_global": qualname, "_budget": self.budget})
        return self._stub_classes[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if self.budget is not None:
            self.budget.objects += 1   # checked by the next constructor call
        if self._storage_key is not None and isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module":
            return pid[1]  # legacy files name each module class with its source code; the class is a stub
        if self._storage_key is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {_short_repr(pid)}")
        if len(pid) < 5 or type(pid[2]) is not str or type(pid[4]) is not int or pid[4] < 0:
            raise pickle.UnpicklingError(f"bad storage persistent id {_short_repr(pid)} (expected a record name "
                                         f"and a whole element count)")
        storage_type, numel = pid[1], pid[4]
        dtype = storage_type.dtype if isinstance(storage_type, StorageType) else "uint8"
        ref = StorageRef(self._storage_key(pid), dtype, numel)
        if self.storages is not None:
            self.storages[ref.key] = ref
        return ref


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "complex64": "complex64",
    "complex128": "complex128", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
}
