"""safetensors files, read and written here without the safetensors package or torch.

Layout: an 8-byte little-endian header length, a JSON header (name -> dtype, shape, data_offsets, plus an
optional ``__metadata__`` of strings), then the raw bytes. Reading the header gives every spec at once.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, BinaryIO, Iterable, NamedTuple

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE, SAFETENSORS_CODE, SAFETENSORS_DTYPE, TensorSpec
from .records import FileSpan, MappedRecords, copy_span, file_size
from .refs import TensorRef

MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile(NamedTuple):
    path: str
    refs: dict[str, TensorRef]
    metadata: dict[str, str]
    records: MappedRecords


def read_safetensors_header(path: str) -> SafetensorsFile:
    """Specs and byte ranges of every tensor, from the header alone."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointFormatError(f"{path}: too short to be a safetensors file")
        length = struct.unpack("<Q", raw)[0]
        if length > MAX_HEADER or length + 8 > file_size(path):
            raise CheckpointFormatError(f"{path}: safetensors header length {length} is past the end of the file; "
                                        f"the file is truncated or not safetensors")
        try:
            header = json.loads(handle.read(length), object_pairs_hook=_compact_entry)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    refs, spans = _parse_entries(header, 8 + length, file_size(path), path)
    return SafetensorsFile(path, refs, dict(metadata), MappedRecords(path, spans))


class _Entry(NamedTuple):
    dtype: str
    shape: tuple
    begin: Any
    end: Any


def _compact_entry(pairs: list[tuple[str, Any]]) -> Any:
    """JSON objects as they are parsed: a tensor entry becomes a small tuple at once (100k entries as dicts
    would cost tens of MB more at the peak)."""
    if len(pairs) == 3:
        entry = dict(pairs)
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if "dtype" in entry and isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2:
            return _Entry(entry["dtype"], tuple(shape), offsets[0], offsets[1])
    return dict(pairs)


def _parse_entries(header: dict, data_start: int, size: int, path: str
                   ) -> tuple[dict[str, TensorRef], dict[str, tuple[int, int]]]:
    """Every entry checked against the file (sizes agree, bytes inside it), so reading cannot fail later."""
    refs: dict[str, TensorRef] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name in list(header):   # popped one by one, so the parsed JSON is freed as the refs are built
        entry = header.pop(name)
        try:
            if not isinstance(entry, _Entry):
                entry = _Entry(entry["dtype"], tuple(entry["shape"]), *entry["data_offsets"])
            dtype, shape, begin, end = SAFETENSORS_DTYPE[entry.dtype], entry.shape, entry.begin, entry.end
            numel = math.prod(shape)
            valid = type(begin) is int and type(end) is int and all(type(d) is int and d >= 0 for d in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointFormatError(f"{path}: bad safetensors entry for '{name}' ({exc})") from exc
        if not valid or end - begin != numel * ELEMENT_SIZE[dtype] or begin < 0:
            raise CheckpointFormatError(f"{path}: '{name}' has {end - begin} bytes, shape {shape} needs "
                                        f"{numel * ELEMENT_SIZE[dtype]}")
        if data_start + end > size:
            raise CheckpointFormatError(f"{path}: '{name}' needs {end - begin} bytes at {data_start + begin}, but the "
                                        f"file ends at {size}; the file is truncated")
        spans[name] = (data_start + begin, end - begin)
        refs[name] = TensorRef(name, 0, shape, None, dtype)  # stride None: contiguous
    return refs, spans


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def build_header(specs: Iterable[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    """The padded header for tensors written in the given order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for spec in specs:
        if spec.dtype not in SAFETENSORS_CODE:
            raise CheckpointFormatError(f"'{spec.name}': dtype {spec.dtype} cannot be stored in safetensors")
        header[spec.name] = {"dtype": SAFETENSORS_CODE[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors_stream(handle: BinaryIO, specs: list[TensorSpec], chunks: Iterable[memoryview | bytes | FileSpan],
                             metadata: dict[str, str] | None = None) -> None:
    """Write the header, then each tensor's bytes as they come, in ``specs`` order."""
    handle.write(build_header(specs, metadata))
    for spec, chunk in zip(specs, chunks, strict=True):
        size = chunk.length if isinstance(chunk, FileSpan) else len(chunk)
        if size != spec.nbytes:
            raise CheckpointFormatError(f"'{spec.name}': got {size} bytes, expected {spec.nbytes}")
        if isinstance(chunk, FileSpan):
            copy_span(chunk, handle)
        else:
            handle.write(chunk)
