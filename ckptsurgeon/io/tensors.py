"""Turning what a reader found into tensors or bytes. The only io module that imports torch (lazily)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE
from .records import FileSpan, RecordStore
from .refs import TensorRef

_NUMPY_INCOMPATIBLE = {"bfloat16", "float8_e4m3fn", "float8_e5m2", "qint8", "quint8", "qint32"}


def materialize(value: Any, records: RecordStore) -> Any:
    """A torch tensor for a TensorRef (a view of the mapped file), a numpy array or a torch tensor."""
    import torch

    if isinstance(value, TensorRef):
        dtype = getattr(torch, value.dtype)
        buffer = _checked_buffer(value, records)
        if len(buffer) == 0 or 0 in value.shape:
            return torch.empty(value.shape, dtype=dtype)
        flat = torch.frombuffer(buffer, dtype=dtype)
        if value.stride is None:
            return flat[value.offset:value.offset + math.prod(value.shape)].view(value.shape)
        return flat.as_strided(value.shape, value.stride, value.offset)
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(_writable(value))


def extent_bytes(ref: TensorRef) -> int:
    """How many bytes of its storage record a tensor reaches into."""
    if 0 in ref.shape:
        return 0
    if ref.stride is None:
        return (ref.offset + math.prod(ref.shape)) * ELEMENT_SIZE.get(ref.dtype, 1)
    last = ref.offset + sum((dim - 1) * step for dim, step in zip(ref.shape, ref.stride))
    return (last + 1) * ELEMENT_SIZE.get(ref.dtype, 1)


def _checked_buffer(ref: TensorRef, records: RecordStore) -> memoryview:
    try:
        buffer = records.buffer(ref.key)
    except KeyError:
        raise CheckpointFormatError(f"{records.path}: storage record {ref.key} is not in the file; "
                                    f"the file is damaged") from None
    if ref.offset < 0 or extent_bytes(ref) > len(buffer):
        raise CheckpointFormatError(f"{records.path}: a tensor needs {extent_bytes(ref)} bytes of record "
                                    f"{ref.key}, which holds {len(buffer)}; the file is truncated or damaged")
    return buffer


def _writable(array: Any) -> Any:
    import numpy as np

    array = np.asarray(array)
    return array if array.flags.writeable else array.copy()


def contiguous_span(value: Any, records: RecordStore) -> FileSpan | None:
    """Where the tensor's bytes lie in the file, when they lie there contiguous; else None."""
    data = contiguous_bytes(value, records)
    if data is None or not hasattr(records, "spans"):
        return None
    size = ELEMENT_SIZE[value.dtype]
    return FileSpan(records.path, records.spans[value.key][0] + value.offset * size, len(data))


def contiguous_bytes(value: Any, records: RecordStore) -> memoryview | None:
    """The tensor's bytes without torch, when they lie contiguous in the file; else None."""
    if not isinstance(value, TensorRef):
        return None
    from .safetensors_file import contiguous_strides

    numel = 1
    for dim in value.shape:
        numel *= dim
    if numel and value.stride is not None and value.stride != contiguous_strides(value.shape):
        return None
    size = ELEMENT_SIZE[value.dtype]
    start = value.offset * size
    return _checked_buffer(value, records)[start:start + numel * size]
