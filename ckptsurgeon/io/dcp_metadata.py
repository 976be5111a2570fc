"""The ``.metadata`` of a torch.distributed.checkpoint (DCP) folder, read without torch.distributed.

``.metadata`` is a pickle of ``torch.distributed.checkpoint.metadata.Metadata``. It is read by
:class:`DcpUnpickler`, which hands out inert stand-ins for DCP's own dataclasses (``Metadata``,
``TensorStorageMetadata``, ``TensorProperties``, ``ChunkStorageMetadata``, ``BytesStorageMetadata``,
``MetadataIndex``, ``StorageMeta``, ``_StorageInfo``), the path classes ``StorageMeta.checkpoint_id`` may hold,
small stand-ins for ``torch.Size``, ``torch.<dtype>``, ``torch.serialization._get_layout`` and the memory-format enum,
and refuses every other global before anything is called. Nothing in torch.distributed is imported.

The stand-ins are then turned into plain, checked data (:class:`DcpLayout`): per entry, its dtype, size and
chunks (each chunk's offsets, sizes and where its bytes lie), or that it is a bytes item.
"""

from __future__ import annotations

import io
import os
from typing import Any, NamedTuple

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE
from .limits import Budget, Limits, limit_error
from .picklescan import check_pickle
from .standins import Allowed, Stub
from .unpickler import _TORCH_DTYPES, SafeUnpickler

METADATA_NAME = ".metadata"

_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "BytesStorageMetadata",
        "MetadataIndex", "StorageMeta")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"), ("pathlib", "Path")}


class Storage(NamedTuple):
    """Where one item's bytes lie: a file of the folder, and a byte range in it."""

    file: str
    offset: int
    length: int


class Chunk(NamedTuple):
    """One saved piece of a tensor: its place in the whole tensor and where its bytes are."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    storage: Storage


class TensorEntry(NamedTuple):
    """A tensor of the checkpoint, from the metadata alone."""

    fqn: str
    dtype: str
    size: tuple[int, ...]
    chunks: tuple[Chunk, ...]


class DcpLayout(NamedTuple):
    """What ``.metadata`` says: tensors, bytes items and their nesting (fqn -> object path)."""

    tensors: dict[str, TensorEntry]
    byte_items: dict[str, Storage | None]
    paths: dict[str, tuple[str, ...]]


def _as_int(value: Any) -> int:
    return value if type(value) is int else 0


def _size(*dims: Any) -> tuple[Any, ...]:
    """Stands for ``torch.Size(list)``."""
    return tuple(dims[0]) if dims and isinstance(dims[0], (list, tuple)) else ()


class DcpUnpickler(SafeUnpickler):
    """Reads a DCP ``.metadata``: DCP's dataclasses become inert stand-ins; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if self.budget is not None:
            self.budget.build(1)
        if (module, name) in _DCP_CLASSES:
            return self._stub_for(f"{module}.{name}")
        if (module, name) == ("torch", "Size"):
            return Allowed("torch.Size", _size, self.budget)
        if module in ("torch._utils", "torch.serialization") and name == "_get_layout":
            return Allowed("torch._utils._get_layout", str, self.budget)
        if (module, name) == ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"):
            return Allowed("_MEM_FORMAT_ENCODING", _as_int, self.budget)
        if module == "torch" and name in _TORCH_DTYPES:
            return super().find_class(module, name)
        path = self.budget.path if self.budget is not None else METADATA_NAME
        raise CheckpointFormatError(f"{path}: refers to the global {module}.{name}, which a DCP .metadata never "
                                    f"holds; refused without running it (the file is damaged or hostile)")


def read_layout(folder: str, limits: Limits | None = None) -> DcpLayout:
    """Parse and check a DCP folder's ``.metadata`` (no tensor data is read)."""
    from .torchfile import _load

    limits = limits or Limits.from_env()
    path = os.path.join(folder, METADATA_NAME)
    try:
        if os.path.getsize(path) > limits.header:
            raise limit_error(path, "header", limits.header)
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CheckpointFormatError(f"{path}: cannot be read ({exc})") from exc
    check_pickle(data, 0, path)
    root = _load(DcpUnpickler(io.BytesIO(data), budget=Budget(path, limits)), path)
    return _layout(root, path)


def _fields(value: Any, what: str, path: str) -> dict[str, Any]:
    if not isinstance(value, Stub) or not value.stub_global.endswith("." + what):
        raise CheckpointFormatError(f"{path}: expected a {what}, found {type(value).__name__}; "
                                    f"not a DCP .metadata or damaged")
    return value.__dict__


def _dims(value: Any, what: str, path: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(d) is int and d >= 0 for d in value):
        raise CheckpointFormatError(f"{path}: {what} is {value!r:.80}, not a list of whole numbers; damaged")
    return tuple(value)


def _layout(root: Any, path: str) -> DcpLayout:
    fields = _fields(root, "Metadata", path)
    entries, storage = fields.get("state_dict_metadata"), fields.get("storage_data")
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        raise CheckpointFormatError(f"{path}: Metadata without state_dict_metadata or storage_data; damaged")
    places = _storage_places(storage, path)
    tensors: dict[str, TensorEntry] = {}
    byte_items: dict[str, Storage | None] = {}
    for fqn, entry in entries.items():
        if not isinstance(fqn, str):
            raise CheckpointFormatError(f"{path}: an entry named {fqn!r:.80}, not a string; damaged")
        if isinstance(entry, Stub) and entry.stub_global.endswith(".BytesStorageMetadata"):
            byte_items[fqn] = places.get((fqn, None))
            continue
        tensors[fqn] = _tensor_entry(fqn, _fields(entry, "TensorStorageMetadata", path), places, path)
    return DcpLayout(tensors, byte_items, _object_paths(fields.get("planner_data"), entries, path))


def _storage_places(storage: dict[Any, Any], path: str) -> dict[tuple[str, tuple[int, ...] | None], Storage]:
    places: dict[tuple[str, tuple[int, ...] | None], Storage] = {}
    for index, info in storage.items():
        key = _fields(index, "MetadataIndex", path)
        where = _fields(info, "_StorageInfo", path)
        fqn, offset = key.get("fqn"), key.get("offset")
        file, start, length = where.get("relative_path"), where.get("offset"), where.get("length")
        if not isinstance(fqn, str) or not isinstance(file, str) or type(start) is not int \
                or type(length) is not int or start < 0 or length < 0:
            raise CheckpointFormatError(f"{path}: a storage entry for {fqn!r:.80} is not a file name with a "
                                        f"whole offset and length; damaged")
        if where.get("transform_descriptors"):
            raise CheckpointFormatError(f"{path}: '{fqn}' is stored through transforms "
                                        f"{where['transform_descriptors']!r:.80} (e.g. compression), which are "
                                        f"not supported; load it with torch and re-save it without extensions")
        dims = None if offset is None else _dims(offset, f"the storage offset of '{fqn}'", path)
        places[(fqn, dims)] = Storage(_checked_file(file, path), start, length)
    return places


def _checked_file(name: str, path: str) -> str:
    """A storage file is a plain file name in the folder (judged by its text, before anything is opened)."""
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", "..", METADATA_NAME):
        raise CheckpointFormatError(f"{path}: names storage file {name!r:.80}, which is not a file in the "
                                    f"checkpoint's folder; the metadata is damaged or hostile")
    return name


def _tensor_entry(fqn: str, fields: dict[str, Any], places: dict[Any, Storage], path: str) -> TensorEntry:
    size = _dims(fields.get("size"), f"the size of '{fqn}'", path)
    properties = fields.get("properties")
    state = properties.__dict__ if isinstance(properties, Stub) else {}
    dtype = state.get("dtype", (state.get("_stub_state") or (None,))[0])
    if not isinstance(dtype, str) or dtype not in ELEMENT_SIZE:
        raise CheckpointFormatError(f"{path}: '{fqn}' has dtype {dtype!r:.40}, which is not supported")
    chunks = []
    for raw in fields.get("chunks") or ():
        chunk = _fields(raw, "ChunkStorageMetadata", path)
        offsets = _dims(chunk.get("offsets"), f"a chunk offset of '{fqn}'", path)
        sizes = _dims(chunk.get("sizes"), f"a chunk size of '{fqn}'", path)
        if len(offsets) != len(size) or len(sizes) != len(size) or \
                any(o + s > d for o, s, d in zip(offsets, sizes, size)):
            raise CheckpointFormatError(f"{path}: '{fqn}' has a chunk at {offsets} of size {sizes} outside its "
                                        f"size {size}; damaged")
        where = places.get((fqn, offsets))
        if where is None:
            raise CheckpointFormatError(f"{path}: no storage entry for the chunk of '{fqn}' at {offsets}; damaged")
        if where.length < _volume(sizes) * ELEMENT_SIZE[dtype]:   # bounds what reading may allocate by file sizes
            raise CheckpointFormatError(f"{path}: the chunk of '{fqn}' at {offsets} is {dtype} {list(sizes)} but "
                                        f"its storage holds {where.length} bytes; damaged")
        chunks.append(Chunk(offsets, sizes, where))
    _check_coverage(fqn, size, chunks, path)
    return TensorEntry(fqn, dtype, size, tuple(chunks))


def _check_coverage(fqn: str, size: tuple[int, ...], chunks: list[Chunk], path: str) -> None:
    """The chunks tile the tensor: no two overlap and their volumes add up to the whole."""
    volume = _volume
    for i, first in enumerate(chunks):
        for second in chunks[i + 1:]:
            if volume(first.sizes) and volume(second.sizes) and all(
                    a < c + d and c < a + b for a, b, c, d in zip(first.offsets, first.sizes,
                                                                  second.offsets, second.sizes)):
                raise CheckpointFormatError(f"{path}: chunks of '{fqn}' at {first.offsets} and {second.offsets} "
                                            f"overlap; damaged")
    if sum(volume(chunk.sizes) for chunk in chunks) != volume(size):
        raise CheckpointFormatError(f"{path}: the chunks of '{fqn}' do not cover its size {size}; the checkpoint "
                                    f"is incomplete (a rank's save missing?) or damaged")


def _volume(dims: tuple[int, ...]) -> int:
    total = 1
    for dim in dims:
        total *= dim
    return total


def _object_paths(planner_data: Any, entries: dict[Any, Any], path: str) -> dict[str, tuple[str, ...]]:
    """Each fqn's path in the saved nested dict (DefaultSavePlanner's flatten mapping); one level when absent."""
    paths: dict[str, tuple[str, ...]] = {}
    mapping = planner_data if isinstance(planner_data, dict) else {}
    for fqn in entries:
        steps = mapping.get(fqn)
        if isinstance(steps, (tuple, list)) and steps and all(type(s) in (str, int) for s in steps):
            paths[fqn] = tuple(str(step) for step in steps)
        else:
            paths[fqn] = (fqn,)
    return paths
