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
import pickle
import warnings
from typing import IO, Any, Callable

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE
from .limits import Budget
from .rebuild import CURRENT_PATH, rebuild_from_type, rebuild_parameter, rebuild_tensor, rebuild_tensor_v3
from .refs import StorageRef
from .standins import (Allowed, DtypeName, PlainOrderedDict, StorageType, Stub,  # noqa: F401  (re-exported)
                       direct, short_repr)
from .ziparchive import RecordSizes


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


# Builtin types are immutable and cheap to build; the rest is handed out wrapped (see Allowed).
_BUILTIN_TYPES: dict[tuple[str, str], Any] = {
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "object"): object,
}
_ALLOCATING = frozenset({("_codecs", "encode"), ("builtins", "bytearray"), ("builtins", "set"),
                         ("builtins", "frozenset")})
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type,
    ("torch._tensor", "_rebuild_from_type"): rebuild_from_type,
}
_DIRECT: dict[tuple[str, str], type] = {
    ("copyreg", "_reconstructor"): direct(_reconstructor),
    ("torch._utils", "_rebuild_tensor"): direct(rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): direct(rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v3"): direct(rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): direct(rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): direct(rebuild_parameter),
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

    def __init__(self, file: IO[bytes], storage_key: Callable[[tuple[Any, ...]], str] | None = None, *,
                 remember_storages: bool = False, record_sizes: RecordSizes | None = None,
                 budget: Budget | None = None) -> None:
        super().__init__(file, encoding="latin1")
        self._storage_key = storage_key
        self.stubbed: dict[str, int] = {}
        # Legacy files size their raw storages by the pickle's dtypes; zip files need no such record.
        self.storages: dict[str, StorageRef] | None = {} if remember_storages else None
        self._record_sizes = record_sizes   # a zip's record sizes: each declared storage must match its record
        self._stub_classes: dict[str, type] = {}
        self.budget = budget
        self._odict = type("OrderedDict", (PlainOrderedDict,), {"_budget": budget})
        self._allocating = _allocating(budget)

    def load(self) -> Any:
        CURRENT_PATH[0] = self.budget.path if self.budget is not None else "<pickle>"
        with warnings.catch_warnings():   # numpy warns about odd constructor arguments: not the user's concern
            warnings.simplefilter("ignore")
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
            from .numpy_globals import numpy_global   # only pickles that hold numpy arrays pay for numpy

            return Allowed(f"numpy.{name}", numpy_global(name, self.budget), self.budget)
        return self._stub_for(f"{module}.{name}")

    def _stub_for(self, qualname: str) -> type:
        self.stubbed[qualname] = self.stubbed.get(qualname, 0) + 1
        if qualname not in self._stub_classes:
            short = qualname.rsplit(".", 1)[-1] or "Stub"
            self._stub_classes[qualname] = type(short, (Stub,), {"stub_global": qualname, "_budget": self.budget})
        return self._stub_classes[qualname]

    def _check_record(self, storage: StorageRef, record_sizes: RecordSizes) -> None:
        """A zip record must be exactly as long as the storage the pickle declares, as torch writes them."""
        size = record_sizes.get(storage.key)
        path = self.budget.path if self.budget is not None else "<pickle>"
        if size is None:
            raise CheckpointFormatError(f"{path}: the pickle refers to storage record data/{storage.key}, which is "
                                        f"not in the file; the file is damaged")
        if size != _nbytes(storage):
            raise CheckpointFormatError(f"{path}: storage record data/{storage.key} holds {size} bytes, but the pickle "
                                        f"declares {storage.numel} {storage.dtype} ({_nbytes(storage)} bytes); the "
                                        f"file is truncated or damaged")

    def persistent_load(self, pid: Any) -> Any:
        if self.budget is not None:
            self.budget.objects += 1   # checked by the next constructor call
        if self._storage_key is not None and isinstance(pid, tuple) and len(pid) > 1 and pid[0] == "module":
            return pid[1]  # legacy files name each module class with its source code; the class is a stub
        if self._storage_key is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {short_repr(pid)}")
        if len(pid) < 5 or type(pid[2]) is not str or type(pid[4]) is not int or pid[4] < 0:
            raise pickle.UnpicklingError(f"bad storage persistent id {short_repr(pid)} (expected a record name "
                                         f"and a whole element count)")
        storage_type, numel = pid[1], pid[4]
        dtype = storage_type.dtype if isinstance(storage_type, StorageType) else "uint8"
        ref = StorageRef(self._storage_key(pid), dtype, numel)
        if self._record_sizes is not None:
            self._check_record(ref, self._record_sizes)
        if self.storages is not None:
            known = self.storages.get(ref.key)   # a damaged pickle may declare one record twice: keep the larger
            if known is None or _nbytes(known) < _nbytes(ref):
                self.storages[ref.key] = ref
        return ref


def _nbytes(storage: StorageRef) -> int:
    return storage.numel * ELEMENT_SIZE.get(storage.dtype, 1)


_TORCH_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64",
    "float16": "float16", "half": "float16", "bfloat16": "bfloat16", "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "complex64": "complex64",
    "complex128": "complex128", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
}
