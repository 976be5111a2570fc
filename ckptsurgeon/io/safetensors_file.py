"""safetensors files, read and written here without the safetensors package or torch.

Layout: an 8-byte little-endian header length, a JSON header (name -> dtype, shape, data_offsets, plus an
optional ``__metadata__`` of strings), then the raw bytes. Reading the header gives every spec at once.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO, Iterable, NamedTuple

from ..errors import CheckpointFormatError
from .limits import limit_error
from ..specs import ELEMENT_SIZE, SAFETENSORS_CODE, SAFETENSORS_DTYPE, TensorSpec
from .records import FileSpan, MappedRecords, copy_span, file_size
from .refs import TensorRef

MAX_HEADER = 100_000_000   # the safetensors library's own limit; see Limits.header
_U64 = 1 << 64


class SafetensorsFile(NamedTuple):
    path: str
    refs: dict[str, TensorRef]
    metadata: dict[str, str]
    records: MappedRecords


def read_safetensors_header(path: str, *, max_header: int = MAX_HEADER) -> SafetensorsFile:
    """Specs and byte ranges of every tensor, from the header alone, validated as the safetensors library
    validates it: UTF-8 JSON without duplicate keys, a ``__metadata__`` of strings, known dtypes, offsets that
    tile the data exactly (no overlap, gap or trailing bytes) and sizes that agree with the shapes."""
    size = file_size(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointFormatError(f"{path}: too short to be a safetensors file")
        length = struct.unpack("<Q", raw)[0]
        if length + 8 > size:
            raise CheckpointFormatError(f"{path}: safetensors header length {length} is past the end of the file; "
                                        f"the file is truncated or not safetensors")
        if length > max_header:
            raise limit_error(path, "header", max_header)
        header = _parse_header(handle.read(length), path)
    metadata = _checked_metadata(header.pop("__metadata__", None), path)
    refs, spans = _parse_entries(header, 8 + length, size, path)
    return SafetensorsFile(path, refs, metadata, MappedRecords(path, spans))


def _parse_header(raw: bytes, path: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_compact_entry, parse_constant=_no_constant,
                            parse_int=_unsigned)
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError(f"{path}: safetensors header is not UTF-8 ({exc})") from exc
    except RecursionError:
        raise CheckpointFormatError(f"{path}: safetensors header nests too deep; the file is damaged or hostile") from None
    except ValueError as exc:   # JSONDecodeError, duplicate keys, NaN, numbers too long
        raise CheckpointFormatError(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: safetensors header is not a JSON object")
    return header


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unsigned(text: str) -> int:
    return -1 if text.startswith("-") else int(text)   # -0 is no offset or size either


def _checked_metadata(metadata: Any, path: str) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) and _utf8(k) and _utf8(v)
                                                 for k, v in metadata.items()):
        raise CheckpointFormatError(f"{path}: safetensors __metadata__ must be an object of strings, got "
                                    f"{_short(metadata)}")
    return dict(metadata)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any, limit: int = 60) -> str:
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Entry(NamedTuple):
    dtype: str
    shape: tuple[Any, ...]   # checked to be whole numbers by _parse_entries
    begin: Any
    end: Any


def _compact_entry(pairs: list[tuple[str, Any]]) -> Any:
    """JSON objects as they are parsed: a tensor entry becomes a small tuple at once (100k entries as dicts
    would cost tens of MB more at the peak); a repeated key is refused, as the safetensors library does."""
    entry = dict(pairs)
    if len(entry) != len(pairs):
        raise ValueError(f"duplicate key {_short(_first_repeat(key for key, _ in pairs))}")
    if len(pairs) == 3:
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if "dtype" in entry and isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2:
            return _Entry(entry["dtype"], tuple(shape), offsets[0], offsets[1])
    return entry


def _first_repeat(keys: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def _parse_entries(header: dict[str, Any], data_start: int, size: int, path: str
                   ) -> tuple[dict[str, TensorRef], dict[str, tuple[int, int]]]:
    """Every entry checked against the file (sizes agree, bytes inside it), so reading cannot fail later."""
    refs: dict[str, TensorRef] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name in list(header):   # popped one by one, so the parsed JSON is freed as the refs are built
        entry = header.pop(name)
        if not isinstance(entry, _Entry) or not isinstance(entry.dtype, str) or entry.dtype not in SAFETENSORS_DTYPE \
                or not _utf8(name):
            raise CheckpointFormatError(f"{path}: bad safetensors entry for {_short(name)}: {_short(entry)} (expected "
                                        f"dtype, shape and data_offsets, with a known dtype)")
        dtype, shape, begin, end = SAFETENSORS_DTYPE[entry.dtype], entry.shape, entry.begin, entry.end
        if not all(type(v) is int and 0 <= v < _U64 for v in (begin, end, *shape)) or end < begin:
            raise CheckpointFormatError(f"{path}: {_short(name)} has shape {_short(list(shape))} and data_offsets "
                                        f"{_short([begin, end])}; both must be whole numbers, offsets ascending")
        numel = _numel(shape, path, name)
        if end - begin != numel * ELEMENT_SIZE[dtype]:
            raise CheckpointFormatError(f"{path}: {_short(name)} has {end - begin} bytes, shape {shape} needs "
                                        f"{numel * ELEMENT_SIZE[dtype]}")
        if data_start + end > size:
            raise CheckpointFormatError(f"{path}: '{name}' needs {end - begin} bytes at {data_start + begin}, but the "
                                        f"file ends at {size}; the file is truncated")
        spans[name] = (data_start + begin, end - begin)
        refs[name] = TensorRef(name, 0, shape, None, dtype)  # stride None: contiguous
    _check_tiling(spans, data_start, size, path)
    return refs, spans


def _numel(shape: tuple[int, ...], path: str, name: str) -> int:
    numel = 1
    for dim in shape:   # the library multiplies left to right in 64 bits and refuses any overflow
        numel *= dim
        if numel >= _U64:
            raise CheckpointFormatError(f"{path}: {_short(name)} has shape {_short(list(shape))}, too many elements")
    return numel


def _check_tiling(spans: dict[str, tuple[int, int]], data_start: int, size: int, path: str) -> None:
    """The tensors' bytes must follow each other from the start of the data to the end of the file."""
    at = data_start
    for name, (start, length) in sorted(spans.items(), key=lambda item: (item[1][0], item[1][0] + item[1][1])):
        if start != at:
            what = "overlaps the tensor before it" if start < at else f"leaves a gap of {start - at} bytes before it"
            raise CheckpointFormatError(f"{path}: {_short(name)} starts at byte {start - data_start} of the data and "
                                        f"{what}; the file is damaged")
        at = start + length
    if at != size:
        what = (f"the file ends at {size}; the file is truncated" if at > size
                else f"{size - at} bytes follow the last tensor; the file is damaged")
        raise CheckpointFormatError(f"{path}: the tensors' data ends at byte {at}, but {what}")


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


def check_key(name: str) -> None:
    """Refuse a tensor name no reader could take back (not UTF-8: a lone surrogate from a damaged pickle)."""
    if not isinstance(name, str) or not _utf8(name) or name == "__metadata__":
        raise CheckpointFormatError(f"tensor name {_short(name)} cannot be written: not valid UTF-8 text (a lone "
                                    f"surrogate) or reserved; rename it (transfer --rename) or drop it")


def build_header(specs: Iterable[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    """The padded header for tensors written in the given order."""
    header: dict[str, object] = {}
    if metadata:
        texts = {str(k): str(v) for k, v in metadata.items()}
        header["__metadata__"] = texts
        bad = next((k for k, v in texts.items() if not (_utf8(k) and _utf8(v))), None)
        if bad is not None:
            raise CheckpointFormatError(f"metadata {_short(bad)}: not valid UTF-8 (a lone surrogate); safetensors "
                                        f"readers would refuse the file")
    offset = 0
    for spec in specs:
        check_key(spec.name)
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
        del chunk   # before the next one is produced: one tensor in memory at a time, not two
