"""Our versions of torch's tensor-rebuilding functions: they record what a tensor is (:class:`TensorRef`) after
checking its geometry against its storage, and build nothing. They take fixed arguments (no ``*args``), so a
call cannot copy a long tuple from the file and needs no budget wrapper: 100k tensors pass through here.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE, dtype_name
from .refs import StorageRef, TensorRef
from .standins import Stub, short_repr

CURRENT_PATH = ["<pickle>"]   # the file being read, for messages raised from inside the pickle machine


def refuse_geometry(what: str, value: Any) -> CheckpointFormatError:
    return CheckpointFormatError(f"{CURRENT_PATH[0]}: a tensor's {what} is {short_repr(value)}; "
                                 f"the file is damaged or not a checkpoint")


def whole(value: Any) -> bool:
    return type(value) is int and value >= 0


def _whole_numbers(values: Any) -> bool:
    """A tuple or list of ints >= 0 (not bools), checked at C speed: 100k tensors pass through here."""
    return type(values) in (tuple, list) and (not values or (set(map(type, values)) == _INT_ONLY and min(values) >= 0))


_INT_ONLY = {int}


def _checked_geometry(storage: StorageRef, offset: Any, size: Any, stride: Any, dtype: str
                      ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape, stride and offset as torch would accept them, inside their storage (no tensor data read)."""
    if type(offset) is not int or offset < 0:
        raise refuse_geometry("storage offset", offset)
    if type(size) is not tuple or type(stride) is not tuple or not _whole_numbers(size + stride):
        if not _whole_numbers(size):   # the slow path names which of the two is wrong
            raise refuse_geometry("shape", size)
        if not _whole_numbers(stride):
            raise refuse_geometry("stride", stride)
    if len(stride) != len(size):
        raise refuse_geometry(f"stride (for shape {tuple(size)})", stride)
    element = ELEMENT_SIZE.get(dtype, 1)
    storage_bytes = storage.numel * ELEMENT_SIZE.get(storage.dtype, 1)
    if storage_bytes % element:
        raise refuse_geometry(f"storage ({storage.numel} {storage.dtype} for a {dtype} tensor)",
                               "not a multiple of the element size")
    last = offset
    for dim, step in zip(size, stride):
        if dim == 0:
            break
        last += (dim - 1) * step
    else:
        if (last + 1) * element > storage_bytes:
            raise refuse_geometry(f"extent (shape {tuple(size)}, stride {tuple(stride)}, offset {offset}, storage "
                                   f"of {storage.numel} {storage.dtype})", "past its storage")
    return tuple(size), tuple(stride)


def rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None, dtype: str | None = None) -> Any:
    if not isinstance(storage, StorageRef):
        return Stub()
    dtype = dtype or storage.dtype
    shape, strides = _checked_geometry(storage, offset, size, stride, dtype)
    return TensorRef(storage.key, offset, shape, strides, dtype, bool(requires_grad))


def rebuild_tensor_v3(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, metadata: Any = None) -> Any:
    name = dtype_name(dtype) if isinstance(dtype, str) else None
    if name not in ELEMENT_SIZE:
        raise refuse_geometry("dtype", dtype)
    return rebuild_tensor(storage, offset, size, stride, requires_grad, dtype=name)


def rebuild_parameter(data: Any, requires_grad: Any = True, hooks: Any = None, state: Any = None) -> Any:
    if isinstance(data, TensorRef):
        return data._replace(requires_grad=bool(requires_grad), is_parameter=True)
    return data


def rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    return func(*args) if callable(func) else Stub()
