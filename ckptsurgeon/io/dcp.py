"""torch.distributed.checkpoint (DCP) folders: ``.metadata`` plus ``__{rank}_{n}.distcp`` files.

Names, shapes and dtypes come from ``.metadata`` alone (see :mod:`.dcp_metadata`). Indexing a tensor reads it:
each of its chunks (a ``torch.save``d tensor, a small torch zip, at a byte range of a ``.distcp`` file) is read
into memory one at a time, parsed with the same no-code unpickler as any torch file, and copied into place.
Folders saved with ``serialization_format=SAFETENSORS`` hold one safetensors file per rank instead, the chunk
of each fqn stored under its name; those chunks are read from the memory-mapped file.
Bytes items (optimizer hyper-parameters, step counters saved as objects, extra values) are not tensors; they
are listed in ``info.containers`` with kind ``bytes``. Nothing here imports or initialises torch.distributed.
"""

from __future__ import annotations

import io
import mmap
import os
import struct
import zipfile
from typing import Any

from ..errors import CheckpointFormatError
from .containers import choose_candidate, find_candidates
from .dcp_metadata import METADATA_NAME, Chunk, DcpLayout, TensorEntry, read_layout
from .limits import Budget, Limits
from .picklescan import check_pickle
from .prefixes import strip_wrapper_prefixes
from .reader import Checkpoint, CheckpointInfo, ContainerSummary, _summaries
from .records import FileSpan
from .refs import TensorRef
from .safetensors_file import SafetensorsFile, read_safetensors_header
from .unpickler import SafeUnpickler
from .ziparchive import RecordSizes

_LOCAL = struct.Struct("<4s5H3L2H")


def is_dcp_folder(path: str) -> bool:
    """A folder holding a DCP ``.metadata``."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, METADATA_NAME))


def dcp_files(folder: str, limits: Limits | None = None) -> list[str]:
    """``.metadata`` and every storage file it names (reads only the metadata)."""
    layout = read_layout(folder, limits)
    return [os.path.join(folder, METADATA_NAME)] + [os.path.join(folder, name) for name in _storage_files(layout)]


def _storage_files(layout: DcpLayout) -> list[str]:
    names = [chunk.storage.file for entry in layout.tensors.values() for chunk in entry.chunks]
    names += [place.file for place in layout.byte_items.values() if place is not None]
    return list(dict.fromkeys(names))


def open_dcp(folder: str, container: str | None, limits: Limits) -> Checkpoint:
    """A DCP folder as a :class:`~ckptsurgeon.io.reader.Checkpoint`; reads ``.metadata`` and stats the files."""
    layout = read_layout(folder, limits)
    _check_files(folder, layout)
    refs = {fqn: TensorRef(fqn, 0, entry.size, None, entry.dtype) for fqn, entry in layout.tensors.items()}
    root = _nest(layout, refs, os.path.join(folder, METADATA_NAME))
    budget = Budget(folder, limits)
    candidates = find_candidates(root, budget)
    chosen, reason = choose_candidate(candidates, container, folder)
    tensors, stripped = strip_wrapper_prefixes(chosen.tensors)
    extras = tuple(ContainerSummary(fqn, "bytes", 0, False) for fqn in layout.byte_items)
    info = CheckpointInfo(folder, "dcp", chosen.path, reason, _summaries(candidates, chosen) + extras, stripped,
                          shards=tuple(_storage_files(layout)))
    return DcpCheckpoint(tensors, DcpRecords(folder, layout.tensors, limits), info)


class DcpCheckpoint(Checkpoint):
    """A DCP folder's tensors: none lies as it is in a file (each chunk is a torch zip, or one entry of a rank's
    safetensors file), so there is no span to copy file to file."""

    def raw_span(self, name: str) -> FileSpan | None:
        """Always None: writers take the assembled tensor (reading it once, not twice)."""
        return None


def _nest(layout: DcpLayout, refs: dict[str, TensorRef], path: str) -> dict[str, Any]:
    """The saved nested dict back from the flat fqns (bytes items as an inert marker, not tensors)."""
    root: dict[str, Any] = {}
    for fqn, steps in layout.paths.items():
        node = root
        for step in steps[:-1]:
            node = node.setdefault(step, {})
            if not isinstance(node, dict):
                raise CheckpointFormatError(f"{path}: '{fqn}' lies under another entry; the metadata is damaged")
        if steps[-1] in node:
            raise CheckpointFormatError(f"{path}: '{fqn}' and another entry share one place; damaged")
        node[steps[-1]] = refs.get(fqn, BYTES_ITEM)
    return root


BYTES_ITEM = "<bytes item>"


def _check_files(folder: str, layout: DcpLayout) -> None:
    """Every storage file exists and is long enough for the byte ranges it should hold (stat only)."""
    ends: dict[str, tuple[int, str]] = {}
    places = [(entry.fqn, chunk.storage) for entry in layout.tensors.values() for chunk in entry.chunks]
    places += [(fqn, place) for fqn, place in layout.byte_items.items() if place is not None]
    for fqn, place in places:
        end = place.offset + place.length
        if end > ends.get(place.file, (-1, ""))[0]:
            ends[place.file] = (end, fqn)
    for name, (end, fqn) in ends.items():
        path = os.path.join(folder, name)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise CheckpointFormatError(f"{path}: storage file missing; {METADATA_NAME} names it for '{fqn}' "
                                        f"(copy the whole checkpoint folder)") from None
        if size < end:
            raise CheckpointFormatError(f"{path}: {size} bytes, but '{fqn}' lies up to byte {end}; the file is "
                                        f"truncated")


class DcpRecords:
    """The record store of a DCP folder: ``buffer(fqn)`` assembles that tensor from its chunks."""

    def __init__(self, folder: str, tensors: dict[str, TensorEntry], limits: Limits) -> None:
        self.path = folder
        self._tensors = tensors
        self._limits = limits
        self._headers: dict[str, SafetensorsFile] = {}   # storage files saved in the safetensors format

    def buffer(self, key: str) -> memoryview:
        """The whole tensor's bytes (C-contiguous), read chunk by chunk."""
        tensor = assemble_tensor(self.path, self._tensors[key], self._limits, self._headers)
        return memoryview(tensor.reshape(-1).view(_torch().uint8).numpy())

    def close(self) -> None:
        """Release the safetensors storage files' maps; torch-format chunks keep nothing open."""
        for parsed in self._headers.values():
            parsed.records.close()
        self._headers.clear()


def _torch() -> Any:
    import torch

    return torch


def assemble_tensor(folder: str, entry: TensorEntry, limits: Limits,
                    headers: dict[str, SafetensorsFile] | None = None) -> Any:
    """The tensor ``entry`` describes: one chunk in memory at a time, each copied into its place."""
    torch = _torch()
    headers = {} if headers is None else headers
    if len(entry.chunks) == 1 and entry.chunks[0].sizes == entry.size:
        return read_chunk(folder, entry, entry.chunks[0], limits, headers).contiguous()
    out = torch.empty(entry.size, dtype=getattr(torch, entry.dtype))
    for chunk in entry.chunks:
        piece = read_chunk(folder, entry, chunk, limits, headers)
        region = out
        for dim, (start, length) in enumerate(zip(chunk.offsets, chunk.sizes)):
            region = region.narrow(dim, start, length)
        region.copy_(piece)
        del piece
    return out


def read_chunk(folder: str, entry: TensorEntry, chunk: Chunk, limits: Limits,
               headers: dict[str, SafetensorsFile] | None = None) -> Any:
    """One chunk's tensor. Default (torch_save) format: its byte range read into memory and parsed as a torch
    zip without running code. Safetensors format: the file's entry named by the fqn, memory-mapped."""
    from .tensors import materialize

    place = chunk.storage
    path = os.path.join(folder, place.file)
    if _is_safetensors(path):
        return _safetensors_chunk(path, entry, chunk, limits, {} if headers is None else headers)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < place.offset + place.length:
                raise CheckpointFormatError(f"{path}: '{entry.fqn}' lies at bytes {place.offset}.."
                                            f"{place.offset + place.length} but the file ends at {size}; the file is "
                                            f"truncated")
            mapped, skip = _map_range(handle.fileno(), place.offset, place.length)
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path}: storage file missing (named by {METADATA_NAME} for "
                                    f"'{entry.fqn}')") from None
    data = memoryview(mapped)[skip:skip + place.length]
    where = f"{path}[{place.offset}:{place.offset + place.length}]"
    ref, records = _parse_chunk(data, where, limits)
    if ref.shape != chunk.sizes or ref.dtype != entry.dtype:
        raise CheckpointFormatError(f"{where}: the chunk of '{entry.fqn}' at {chunk.offsets} holds {ref.dtype} "
                                    f"{list(ref.shape)}, but the metadata says {entry.dtype} {list(chunk.sizes)}; "
                                    f"damaged")
    return materialize(ref, records)


def _map_range(fd: int, offset: int, length: int) -> tuple[mmap.mmap, int]:
    """A copy-on-write map of just these bytes (from the page boundary before them), its pages faulted in at
    once where the platform can: the tensor views the page cache, nothing is copied unless written to."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
    if length + offset - start == 0:
        return mmap.mmap(-1, 1), 0   # an empty item: nothing to map
    mapped = mmap.mmap(fd, length + offset - start, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    return mapped, offset - start


def _is_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except FileNotFoundError:
        return False   # named as missing by the reader below
    return len(head) == 9 and head[8:9] == b"{"


def _safetensors_chunk(path: str, entry: TensorEntry, chunk: Chunk, limits: Limits,
                       headers: dict[str, SafetensorsFile]) -> Any:
    """A chunk saved with ``serialization_format=SAFETENSORS``: one entry per fqn in each rank's file."""
    from .tensors import materialize

    if path not in headers:
        headers[path] = read_safetensors_header(path, max_header=limits.header)
    parsed = headers[path]
    ref = parsed.refs.get(entry.fqn)
    if ref is None or ref.shape != chunk.sizes or ref.dtype != entry.dtype:
        found = "nothing" if ref is None else f"{ref.dtype} {list(ref.shape)}"
        raise CheckpointFormatError(f"{path}: holds {found} for '{entry.fqn}', but the metadata says "
                                    f"{entry.dtype} {list(chunk.sizes)} at {chunk.offsets}; damaged")
    return materialize(ref, parsed.records)


class _ChunkRecords:
    """The records of one in-memory torch zip."""

    def __init__(self, where: str, data: memoryview, spans: dict[str, tuple[int, int]]) -> None:
        self.path, self._data, self._spans = where, data, spans

    def buffer(self, key: str) -> memoryview:
        start, length = self._spans[key]
        return self._data[start:start + length]

    def close(self) -> None:
        """The bytes go with the last tensor viewing them."""


def _parse_chunk(data: memoryview, where: str, limits: Limits) -> tuple[TensorRef, _ChunkRecords]:
    from .torchfile import _load

    try:
        archive = zipfile.ZipFile(_ViewFile(data))
        spans = {info.filename: _data_span(data, info, where) for info in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, struct.error, OSError) as exc:
        raise CheckpointFormatError(f"{where}: not a torch-saved tensor ({exc}); the file is truncated or damaged "
                                    f"(safetensors-format DCP storage is not supported)") from exc
    pickled = next((name for name in spans if name.endswith("/data.pkl") or name == "data.pkl"), None)
    if pickled is None:
        raise CheckpointFormatError(f"{where}: a zip without data.pkl, not a torch-saved tensor; damaged")
    prefix = pickled[: -len("data.pkl")] + "data/"
    sizes = RecordSizes(len(spans))
    records = {name[len(prefix):]: span for name, span in spans.items() if name.startswith(prefix)}
    for key, (_, length) in records.items():
        sizes.put(key, length)
    start, length = spans[pickled]
    pickled_bytes = bytes(data[start:start + length])   # small: names and shapes
    check_pickle(pickled_bytes, 0, where)
    unpickler = SafeUnpickler(io.BytesIO(pickled_bytes), storage_key=lambda pid: str(pid[2]),
                              record_sizes=sizes, budget=Budget(where, limits))
    ref = _load(unpickler, where)
    if not isinstance(ref, TensorRef) or unpickler.stubbed:
        raise CheckpointFormatError(f"{where}: holds {type(ref).__name__}, not one plain tensor; damaged")
    return ref, _ChunkRecords(where, data, records)


class _ViewFile(io.RawIOBase):
    """A read-only file over a memoryview, for zipfile to find the records without copying the bytes."""

    def __init__(self, data: memoryview) -> None:
        self._data, self._at = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._data)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def readinto(self, buffer: Any) -> int:
        part = self._data[self._at:self._at + len(buffer)]
        memoryview(buffer)[:len(part)] = part
        self._at += len(part)
        return len(part)


def _data_span(data: memoryview, info: zipfile.ZipInfo, where: str) -> tuple[int, int]:
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointFormatError(f"{where}: record {info.filename} is compressed; torch writes records "
                                    f"uncompressed; damaged")
    fields = _LOCAL.unpack_from(data, info.header_offset)
    if fields[0] != b"PK\x03\x04":
        raise CheckpointFormatError(f"{where}: damaged local header for {info.filename}")
    start = info.header_offset + _LOCAL.size + fields[9] + fields[10]
    if start + info.file_size > len(data):
        raise CheckpointFormatError(f"{where}: record {info.filename} runs past the chunk's end; damaged")
    return start, info.file_size
