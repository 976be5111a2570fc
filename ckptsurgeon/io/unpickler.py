"""A pickle reader that runs no code from the file.

Every global a pickle names goes through :meth:`SafeUnpickler.find_class`. Only a short allow-list of
container and tensor-rebuilding functions is honoured, and those are our own re-implementations that
record what a tensor is (:class:`TensorRef`) instead of building it. Everything else (model classes,
``os.system``, ``eval``, ``getattr`` ...) becomes an inert stand-in class that only stores what the pickle
hands it, so a whole pickled ``nn.Module`` still yields its ``_parameters`` / ``_buffers`` / ``_modules``.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
from typing import Any, Callable

from ..specs import STORAGE_DTYPE, dtype_name
from .refs import StorageRef, TensorRef


class PlainOrderedDict(dict):
    """Stands for ``collections.OrderedDict``: insertion-ordered too, and smaller (a pickled tensor carries one
    for its hooks, so 100k tensors make 100k of them); takes attributes such as a state dict's ``_metadata``."""


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

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "Stub":
        return type(self)(*args)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state, slots = state
            self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(k, str)})
        elif state is not None:
            self.__dict__["_stub_state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_stub_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.stub_global}>"


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> Any:
    if not isinstance(storage, StorageRef):
        return Stub()
    return TensorRef(storage.key, offset, tuple(size), tuple(stride), storage.dtype, bool(rest[0]) if rest else False)


def _rebuild_tensor_v3(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, *rest: Any) -> Any:
    ref = _rebuild_tensor(storage, offset, size, stride, requires_grad)
    return ref._replace(dtype=dtype_name(dtype)) if isinstance(ref, TensorRef) else ref


def _rebuild_parameter(data: Any, requires_grad: Any = True, *rest: Any) -> Any:
    if isinstance(data, TensorRef):
        return data._replace(requires_grad=bool(requires_grad), is_parameter=True)
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    return func(*args) if callable(func) else Stub()


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    if isinstance(cls, type) and issubclass(cls, Stub):
        return cls.__new__(cls)
    if cls in (dict, collections.OrderedDict, set, list):
        return cls()
    return Stub()


def _encode_latin1(text: Any, encoding: str = "latin1", *rest: Any) -> Any:
    # Python 2 era pickles spell bytes as _codecs.encode(str, 'latin1').
    if isinstance(text, str) and encoding in ("latin1", "latin-1"):
        return text.encode("latin1")
    return Stub()


def _numpy_global(name: str) -> Callable[..., Any]:
    import numpy as np  # only pickles that hold numpy arrays pay for numpy

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    table: dict[str, Any] = {
        "_reconstruct": _guard_ndarray(multiarray._reconstruct, np.ndarray),
        "_frombuffer": _guard_frombuffer(np),
        "scalar": multiarray.scalar,
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }
    return table[name]


def _guard_ndarray(reconstruct: Callable[..., Any], ndarray: type) -> Callable[..., Any]:
    def rebuild(cls: Any, *args: Any) -> Any:
        return reconstruct(ndarray, *args) if cls is ndarray else Stub()
    return rebuild


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


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): PlainOrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _encode_latin1,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
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
                 remember_storages: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self._storage_key = storage_key
        self.stubbed: dict[str, int] = {}
        # Legacy files size their raw storages by the pickle's dtypes; zip files need no such record.
        self.storages: dict[str, StorageRef] | None = {} if remember_storages else None
        self._stub_classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module, name = _py3_name(module, name)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return StorageType(name)
        if module == "torch" and name in _TORCH_DTYPES:
            return DtypeName(_TORCH_DTYPES[name])
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return _numpy_global(name)
        return self._stub_for(f"{module}.{name}")

    def _stub_for(self, qualname: str) -> type:
        self.stubbed[qualname] = self.stubbed.get(qualname, 0) + 1
        if qualname not in self._stub_classes:
            short = qualname.rsplit(".", 1)[-1] or "Stub"
            self._stub_classes[qualname] = type(short, (Stub,), {"stub_global": qualname})
        return self._stub_classes[qualname]

    def persistent_load(self, pid: Any) -> Any:
        if self._storage_key is not None and isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module":
            return pid[1]  # legacy files name each module class with its source code; the class is a stub
        if self._storage_key is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {_short_repr(pid)}")
        storage_type, numel = pid[1], pid[4]
        dtype = storage_type.dtype if isinstance(storage_type, StorageType) else "uint8"
        ref = StorageRef(self._storage_key(pid), dtype, int(numel))
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
