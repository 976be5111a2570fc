"""Turning what a reader found into tensors or bytes. The only io module that imports torch (lazily)."""

from __future__ import annotations

from typing import Any

from ..specs import ELEMENT_SIZE
from .records import RecordStore
from .unpickler import TensorRef

_NUMPY_INCOMPATIBLE = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "qint8", "quint8", "qint32"}


def materialize(value: Any, records: RecordStore) -> Any:
    """A torch tensor for a TensorRef (a view of the mapped file), a numpy array or a torch tensor."""
    import torch

    if isinstance(value, TensorRef):
        dtype = getattr(torch, value.dtype)
        buffer = records.buffer(value.storage.key)
        if len(buffer) == 0 or 0 in value.shape:
            return torch.empty(value.shape, dtype=dtype)
        flat = torch.frombuffer(buffer, dtype=dtype)
        return flat.as_strided(value.shape, value.stride, value.offset)
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(_writable(value))


def _writable(array: Any) -> Any:
    import numpy as np

    array = np.asarray(array)
    return array if array.flags.writeable else array.copy()


def contiguous_bytes(value: Any, records: RecordStore) -> memoryview | None:
    """The tensor's bytes without torch, when they lie contiguous in the file; else None."""
    if not isinstance(value, TensorRef):
        return None
    from .safetensors_file import contiguous_strides

    numel = 1
    for dim in value.shape:
        numel *= dim
    if numel and value.stride != contiguous_strides(value.shape):
        return None
    size = ELEMENT_SIZE[value.dtype]
    start = value.offset * size
    return records.buffer(value.storage.key)[start:start + numel * size]
