"""torch.distributed.checkpoint (DCP) folders, written tensor by tensor and atomically.

Layout, as ``torch.distributed.checkpoint.save`` writes it from one process with the default planner and
``FileSystemWriter``: the folder holds ``__0_0.distcp`` and ``.metadata``.

- ``__0_0.distcp``: the tensors one after another, each exactly what ``torch.save(tensor, stream)`` writes
  for that tensor alone (a torch zip whose ``data.pkl`` is the bare tensor and ``data/0`` its bytes; offsets
  inside each item count from its start). The zip is made here from the spec and the bytes, so no torch is
  needed for tensors whose bytes come from ``raw``, and one tensor's bytes are in memory at a time.
  Quantized tensors (scales only torch can pickle) go through ``torch.save`` itself.
- ``.metadata``: a pickled ``torch.distributed.checkpoint.metadata.Metadata`` (``pickle.dump``, as
  ``FileSystemWriter.finish``): per key a ``TensorStorageMetadata`` (dtype, size, one chunk at offset 0
  covering the tensor), ``storage_data`` mapping ``MetadataIndex(key, zeros, 0)`` to
  ``_StorageInfo("__0_0.distcp", offset, length)``, ``planner_data`` ``{key: (key,)}``, version "1.0.0".

Read it back with ``torch.distributed.checkpoint.load(state_dict, checkpoint_id=path)`` or turn it into a
``torch.save`` file with ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save``.
"""

from __future__ import annotations

import os
import pickle
import uuid
from typing import Any, BinaryIO, Callable, Mapping

from ..errors import CheckpointFormatError
from ..specs import TensorSpec, dtype_name
from .folders import atomic_folder, check_output_folder
from .records import FileSpan
from .torchzip_writer import STREAMED_DTYPES, write_tensor_item
from .writer import tensor_bytes

DATA_FILE = "__0_0.distcp"
METADATA_FILE = ".metadata"
DCP_VERSION = "1.0.0"   # torch.distributed.checkpoint.filesystem.CURRENT_DCP_VERSION in torch 2.13

RawBytes = Callable[[str], "memoryview | FileSpan | None"]


def write_dcp_folder(path: str, specs: list[TensorSpec], produce: Mapping[str, Callable[[], Any]], *,
                     raw: RawBytes | None = None, force: bool = False) -> str:
    """Write the tensors of ``specs`` as a DCP folder at ``path``, one tensor in memory at a time; returns path.

    ``produce[name]()`` returns a torch tensor of the spec's shape and dtype; ``raw(name)``, when given, may
    return its bytes in C order (or where they lie in a file) and is tried first. The folder appears whole
    or not at all (see ``folders.atomic_folder``); an existing non-empty folder is replaced only with
    ``force``. Raises ``OutputError`` for a refused output or a failed write, ``CheckpointFormatError`` for
    a repeated name or a tensor that does not match its spec.
    """
    path = check_output_folder(path, force=force)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise CheckpointFormatError(f"'{spec.name}': two tensors of that name; a state dict holds one")
        seen.add(spec.name)
    with atomic_folder(path, force=force) as temp:
        with open(os.path.join(temp, DATA_FILE), "wb") as handle:
            spans = [_write_item(handle, spec, produce, raw) for spec in specs]
        with open(os.path.join(temp, METADATA_FILE), "wb") as handle:
            pickle.dump(build_metadata(specs, spans, checkpoint_id=os.path.abspath(path)), handle)
    return path


def build_metadata(specs: list[TensorSpec], spans: list[tuple[int, int]], *, checkpoint_id: str) -> Any:
    """The ``Metadata`` for ``specs`` whose items lie at ``spans`` (offset, length) in ``__0_0.distcp``."""
    import torch
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta,
                                                       TensorProperties, TensorStorageMetadata)

    tensors: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    for spec, (offset, length) in zip(specs, spans, strict=True):
        size, zeros = torch.Size(spec.shape), torch.Size([0] * len(spec.shape))
        tensors[spec.name] = TensorStorageMetadata(properties=TensorProperties(dtype=getattr(torch, spec.dtype)),
                                                   size=size, chunks=[ChunkStorageMetadata(offsets=zeros, sizes=size)])
        storage[MetadataIndex(spec.name, zeros, 0)] = _StorageInfo(DATA_FILE, offset, length)
    return Metadata(state_dict_metadata=tensors, planner_data={spec.name: (spec.name,) for spec in specs},
                    storage_data=storage, storage_meta=StorageMeta(checkpoint_id=checkpoint_id, save_id=str(uuid.uuid4())),
                    version=DCP_VERSION)


def _write_item(handle: BinaryIO, spec: TensorSpec, produce: Mapping[str, Callable[[], Any]],
                raw: RawBytes | None) -> tuple[int, int]:
    """One tensor appended to ``handle``; its (offset, length). Nothing of it is kept once this returns."""
    offset = handle.tell()
    data = raw(spec.name) if raw is not None else None
    if data is not None:
        return offset, write_tensor_item(handle, spec, data)
    tensor = produce[spec.name]()
    _check_tensor(spec, tensor)
    if spec.dtype not in STREAMED_DTYPES:
        return offset, _save_with_torch(handle, tensor, offset)
    return offset, write_tensor_item(handle, spec, tensor_bytes(tensor))


def _check_tensor(spec: TensorSpec, tensor: Any) -> None:
    shape, dtype = tuple(tensor.shape), dtype_name(tensor.dtype)
    if shape != spec.shape or dtype != spec.dtype:
        raise CheckpointFormatError(f"'{spec.name}': produced {dtype} {list(shape)}, expected {spec.dtype} "
                                    f"{list(spec.shape)}")


def _save_with_torch(handle: BinaryIO, tensor: Any, offset: int) -> int:
    """``torch.save`` of a tensor torch alone can pickle (quantized), on a storage of its own size."""
    import torch

    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size() or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    torch.save(tensor.detach().cpu(), handle)
    return handle.tell() - offset
