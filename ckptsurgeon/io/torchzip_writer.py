"""Torch zip checkpoints written tensor by tensor, in the layout ``torch.save`` writes, without torch.

``torch.save`` builds the whole state dict in memory; here the pickle is made from names and shapes alone
(known before any tensor data), written first as torch writes it, and then each tensor's bytes are streamed
into a record of their own, so only one tensor's bytes are held at a time.

Layout, as torch's ``PyTorchStreamWriter`` (miniz) writes it: the records ``ARCHIVE/data.pkl``,
``.format_version`` ("1"), ``.storage_alignment`` ("64"), ``byteorder`` ("little"), ``data/0`` ... one per
tensor, ``version`` ("3\\n") and ``.data/serialization_id``, all stored uncompressed with time and date 0. Each
local header carries an ``FB`` extra field of ``Z`` padding so that the record's data starts at a multiple of
64 bytes (``torch.load(mmap=True)`` maps storages in place). Sizes and the CRC-32 follow each non-empty record
in a data descriptor (general-purpose bit 3); the central directory, a zip64 end record and its locator come
last. A record of 4 GiB or more, or one starting past 4 GiB, gets a zip64 extra field (local and central) and
a 24-byte data descriptor, as miniz writes them.

The pickle (protocol 2, ``data.pkl``) is encoded here opcode by opcode rather than with ``pickle.Pickler``:
the pickler writes a global only after importing its module (``torch._utils``), and the pure-Python pickler
takes seconds for 100k tensors. Its memo follows the C pickler's, so the bytes equal torch's for the same
``OrderedDict`` (the tests compare them). Only ``serialization_id`` differs: torch derives it from C++
``std::hash`` values; here it is a deterministic digest of the record names and CRC-32s.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import BinaryIO, Iterable, Iterator

from ..errors import CheckpointFormatError
from ..specs import TensorSpec
from .records import COPY_CHUNK, FileSpan
from .safetensors_file import contiguous_strides

ALIGNMENT = 64
ZIP64_LIMIT = 0xFFFFFFFF   # miniz's MZ_UINT32_MAX: a size or offset from here on needs zip64

# dtype -> torch's legacy typed-storage class, pickled as ``torch.<Name>`` with ``_rebuild_tensor_v2``.
TYPED_STORAGE: dict[str, str] = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex128": "ComplexDoubleStorage", "complex64": "ComplexFloatStorage",
}
# dtypes without one: torch pickles a byte storage (``torch.storage.UntypedStorage``) and ``torch.<dtype>``
# with ``_rebuild_tensor_v3``. Quantized tensors (scales, zero points) are not written here.
UNTYPED_DTYPES = frozenset({"uint16", "uint32", "uint64", "complex32", "float8_e4m3fn", "float8_e5m2",
                            "float8_e4m3fnuz", "float8_e5m2fnuz"})
STREAMED_DTYPES = frozenset(TYPED_STORAGE) | UNTYPED_DTYPES

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR = struct.Struct("<4sLQL")
_EOCD = struct.Struct("<4s4H2LH")
_UTF8 = 0x0800          # general-purpose flag: names are UTF-8
_DESCRIPTOR = 0x0008    # general-purpose flag: CRC and sizes follow the data
_BATCH = 1000           # the pickler's SETITEMS batch size


def write_torch_zip_stream(handle: BinaryIO, specs: list[TensorSpec], chunks: Iterable[memoryview | bytes | FileSpan],
                           *, archive_name: str = "archive", zip64_threshold: int = ZIP64_LIMIT) -> None:
    """Write a torch zip of ``specs`` (an ``OrderedDict`` name -> tensor, as ``torch.save`` would), then each
    tensor's bytes as they come, in ``specs`` order; ``handle`` needs only ``write``.

    Each chunk is one tensor's bytes in C order (a ``FileSpan`` is read from its file); it is released before
    the next is asked for, so one tensor's bytes are in memory at a time. ``archive_name`` is the folder of the
    records (torch.save names it after the file, or "archive" for a file object). ``zip64_threshold`` lowers
    where zip64 fields begin, for tests. Raises ``CheckpointFormatError`` for a chunk of the wrong size, a
    repeated or non-UTF-8 name, or a dtype with no torch storage (quantized).
    """
    if not archive_name or "/" in archive_name:
        raise CheckpointFormatError(f"archive name {archive_name!r}: must be a non-empty name without '/'")
    archive = _ZipStream(handle, archive_name + "/", zip64_threshold)
    archive.add("data.pkl", build_pickle(specs))
    archive.add(".format_version", b"1")
    archive.add(".storage_alignment", str(ALIGNMENT).encode())
    archive.add("byteorder", b"little")   # like the safetensors writer, this assumes a little-endian machine
    source = iter(chunks)
    for key, spec in enumerate(specs):
        chunk = next(source, None)
        if chunk is None:
            raise CheckpointFormatError(f"'{spec.name}': no bytes given ({key} chunks for {len(specs)} tensors)")
        size = chunk.length if isinstance(chunk, FileSpan) else memoryview(chunk).nbytes
        if size != spec.nbytes:
            raise CheckpointFormatError(f"'{spec.name}': got {size} bytes, expected {spec.nbytes}")
        archive.stream(f"data/{key}", _span_blocks(chunk) if isinstance(chunk, FileSpan) else [chunk], size)
        del chunk   # before the next tensor is produced
    if next(source, None) is not None:
        raise CheckpointFormatError(f"more chunks than the {len(specs)} tensors")
    archive.add("version", b"3\n")
    archive.add(".data/serialization_id", archive.serialization_id())
    archive.close()


def build_pickle(specs: Iterable[TensorSpec]) -> bytes:
    """``data.pkl`` for an ``OrderedDict`` of the tensors in ``specs`` order, storage ``i`` holding tensor
    ``i`` whole (offset 0, contiguous strides, ``requires_grad`` False)."""
    encoder = _Pickle()
    encoder.global_("collections", "OrderedDict")
    encoder.raw(b")R")
    encoder.put()
    seen: set[str] = set()
    batch: list[TensorSpec] = []
    for spec in specs:
        if spec.name in seen:
            raise CheckpointFormatError(f"'{spec.name}': two tensors of that name; a state dict holds one")
        seen.add(spec.name)
        batch.append(spec)
        if len(batch) == _BATCH:
            _write_batch(encoder, batch, len(seen) - len(batch))
            batch = []
    if batch:
        _write_batch(encoder, batch, len(seen) - len(batch))
    encoder.raw(b".")
    return bytes(encoder.out)


def _write_batch(encoder: "_Pickle", batch: list[TensorSpec], first_key: int) -> None:
    """Items as the pickler batches them: MARK ... SETITEMS, or SETITEM for a batch of one."""
    if len(batch) > 1:
        encoder.raw(b"(")
    for key, spec in enumerate(batch, first_key):
        encoder.text(spec.name)
        _write_tensor(encoder, spec, str(key))
    encoder.raw(b"u" if len(batch) > 1 else b"s")


def _write_tensor(encoder: "_Pickle", spec: TensorSpec, key: str) -> None:
    """``_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` with the storage a persistent id
    ``('storage', torch.<Name>Storage, key, 'cpu', numel)``; v3 with a byte storage and the dtype otherwise."""
    typed = TYPED_STORAGE.get(spec.dtype)
    if typed is None and spec.dtype not in UNTYPED_DTYPES:
        raise CheckpointFormatError(f"'{spec.name}': dtype {spec.dtype} cannot be written to a torch zip here; "
                                    f"dequantize it (tensor.dequantize()) or write it with torch.save")
    encoder.global_("torch._utils", "_rebuild_tensor_v2" if typed else "_rebuild_tensor_v3")
    encoder.raw(b"((")
    encoder.shared_text("storage")
    if typed:
        encoder.global_("torch", typed)
    else:
        encoder.global_("torch.storage", "UntypedStorage")
    encoder.text(key)
    encoder.shared_text("cpu")
    encoder.integer(spec.numel if typed else spec.nbytes)
    encoder.raw(b"t")
    encoder.put()
    encoder.raw(b"Q")
    encoder.integer(0)
    encoder.integers(spec.shape)
    encoder.integers(contiguous_strides(spec.shape))
    encoder.raw(b"\x89")   # NEWFALSE: requires_grad
    encoder.global_("collections", "OrderedDict")   # backward hooks: an empty OrderedDict
    encoder.raw(b")R")
    encoder.put()
    if not typed:
        encoder.global_("torch", spec.dtype)
    encoder.raw(b"t")
    encoder.put()
    encoder.raw(b"R")
    encoder.put()


class _Pickle:
    """Protocol-2 opcodes, memoized as the C pickler memoizes them (every string, tuple and reduced object
    gets a BINPUT; a global or a shared string seen before is a BINGET)."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.count = 0
        self.shared: dict[tuple[str, str], int] = {}

    def raw(self, opcodes: bytes) -> None:
        self.out += opcodes

    def put(self) -> int:
        index, self.count = self.count, self.count + 1
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)
        return index

    def get(self, index: int) -> None:
        self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)

    def global_(self, module: str, name: str) -> None:
        self._once(("global", f"{module}\n{name}"), b"c" + f"{module}\n{name}\n".encode("ascii"))

    def shared_text(self, text: str) -> None:
        """A string torch passes as one object each time ('storage', 'cpu')."""
        self._once(("text", text), b"X" + struct.pack("<I", len(text.encode())) + text.encode())

    def _once(self, key: tuple[str, str], opcodes: bytes) -> None:
        index = self.shared.get(key)
        if index is not None:
            self.get(index)
            return
        self.out += opcodes
        self.shared[key] = self.put()

    def text(self, text: str) -> None:
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            raise CheckpointFormatError(f"tensor name {ascii(text)} cannot be written: not valid UTF-8 text (a lone "
                                        f"surrogate); rename it or drop it") from None
        self.out += b"X" + struct.pack("<I", len(encoded)) + encoded
        self.put()

    def integer(self, value: int) -> None:
        if 0 <= value < 0x100:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 0x10000:
            self.out += b"M" + struct.pack("<H", value)
        elif -0x80000000 <= value < 0x80000000:
            self.out += b"J" + struct.pack("<i", value)
        else:   # LONG1: little-endian two's complement, as pickle.encode_long
            encoded = value.to_bytes((value.bit_length() >> 3) + 1, "little", signed=True)
            self.out += b"\x8a" + bytes([len(encoded)]) + encoded

    def integers(self, values: tuple[int, ...]) -> None:
        if not values:
            self.out += b")"
            return
        if len(values) > 3:
            self.out += b"("
        for value in values:
            self.integer(value)
        self.out += b"t" if len(values) > 3 else b"\x85\x86\x87"[len(values) - 1:len(values)]
        self.put()


class _ZipStream:
    """Records appended one after another to a write-only handle; the central directory is kept compact in
    memory (some 60 bytes a record) and written by ``close``."""

    def __init__(self, handle: BinaryIO, prefix: str, zip64_threshold: int) -> None:
        self.handle, self.prefix, self.limit = handle, prefix, zip64_threshold
        self.at = 0
        self.count = 0
        self.central = bytearray()
        self.names = hashlib.blake2b(digest_size=8)
        self.crcs = hashlib.blake2b(digest_size=8)

    def _write(self, data: bytes | memoryview) -> None:
        self.handle.write(data)
        self.at += memoryview(data).nbytes

    def add(self, name: str, data: bytes) -> None:
        """A small record, whole."""
        self.stream(name, [data], len(data))

    def stream(self, name: str, blocks: Iterable[bytes | memoryview], size: int) -> None:
        """One stored record of ``size`` bytes, written block by block as they come."""
        encoded = (self.prefix + name).encode("utf-8")
        offset, big_size, big_offset = self.at, size >= self.limit, self.at >= self.limit
        zip64 = _zip64_field(size if big_size else None, 0 if big_size else None, offset if big_offset else None)
        flags = _UTF8 | (_DESCRIPTOR if size else 0)
        start = offset + _LOCAL.size + len(encoded) + len(zip64) + 4
        padding = -start % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        self._write(_LOCAL.pack(b"PK\x03\x04", 0, flags, 0, 0, 0, 0, 0, 0, len(encoded), len(extra)) + encoded + extra)
        crc, written = 0, 0
        for block in blocks:
            crc = zlib.crc32(block, crc)
            self._write(block)
            written += memoryview(block).nbytes
        if written != size:
            raise CheckpointFormatError(f"record {name}: got {written} bytes, expected {size}")
        if size:
            wide = big_size or big_offset
            self._write(struct.pack("<4sLQQ" if wide else "<4sLLL", b"PK\x07\x08", crc, size, size))
        self._add_central(encoded, flags, crc, size, offset)
        self.names.update(encoded + b"\0")
        self.crcs.update(struct.pack("<L", crc))

    def _add_central(self, encoded: bytes, flags: int, crc: int, size: int, offset: int) -> None:
        big_size, big_offset = size >= self.limit, offset >= self.limit
        extra = _zip64_field(size if big_size else None, size if big_size else None, offset if big_offset else None)
        small_size = 0xFFFFFFFF if big_size else size
        self.central += _CENTRAL.pack(b"PK\x01\x02", 0, 0, flags, 0, 0, 0, crc, small_size, small_size,
                                      len(encoded), len(extra), 0, 0, 0, 0, 0xFFFFFFFF if big_offset else offset)
        self.central += encoded + extra
        self.count += 1

    def serialization_id(self) -> bytes:
        """40 digits from the names and CRC-32s of the records so far (torch: the same, from C++ hashes)."""
        names, crcs = (int.from_bytes(h.digest(), "little") for h in (self.names, self.crcs))
        return f"{names:020d}{crcs:020d}".encode()

    def close(self) -> None:
        """The central directory, then the zip64 end record and locator (always, as torch), then the end record."""
        cd_offset, cd_size = self.at, len(self.central)
        self._write(bytes(self.central))
        end64 = self.at
        self._write(_EOCD64.pack(b"PK\x06\x06", _EOCD64.size - 12, 0x031E, 0x2D, 0, 0, self.count, self.count,
                                 cd_size, cd_offset))
        self._write(_LOCATOR.pack(b"PK\x06\x07", 0, end64, 1))
        count = min(self.count, 0xFFFF)
        self._write(_EOCD.pack(b"PK\x05\x06", 0, 0, count, count, _clip(cd_size, self.limit),
                               _clip(cd_offset, self.limit), 0))


def _zip64_field(uncompressed: int | None, compressed: int | None, offset: int | None) -> bytes:
    """The zip64 extended-information extra field (id 1) with the values given, in the order the spec sets."""
    values = [v for v in (uncompressed, compressed, offset) if v is not None]
    if not values:
        return b""
    return struct.pack(f"<2H{len(values)}Q", 1, 8 * len(values), *values)


def _clip(value: int, limit: int) -> int:
    return 0xFFFFFFFF if value >= limit else value


def _span_blocks(span: FileSpan) -> Iterator[bytes]:
    """A span's bytes in blocks (read once: the record's CRC-32 needs them)."""
    with open(span.path, "rb") as source:
        source.seek(span.offset)
        left = span.length
        while left:
            block = source.read(min(COPY_CHUNK, left))
            if not block:
                raise OSError(f"{span.path}: ended {left} bytes early")
            left -= len(block)
            yield block


def tensor_pickle(spec: TensorSpec) -> bytes:
    """``data.pkl`` of ``torch.save(tensor)`` for a contiguous tensor on its own storage ``'0'``."""
    encoder = _Pickle()
    _write_tensor(encoder, spec, "0")
    encoder.raw(b".")
    return bytes(encoder.out)


def write_tensor_item(handle: BinaryIO, spec: TensorSpec, chunk: memoryview | bytes | FileSpan) -> int:
    """Append the torch zip ``torch.save`` writes for the one tensor ``spec`` with bytes ``chunk``; returns its
    length. Records and alignment as :func:`write_torch_zip_stream`, offsets counted from here (a DCP item)."""
    size = chunk.length if isinstance(chunk, FileSpan) else memoryview(chunk).nbytes
    if size != spec.nbytes:
        raise CheckpointFormatError(f"'{spec.name}': got {size} bytes, expected {spec.nbytes}")
    archive = _ZipStream(handle, "archive/", ZIP64_LIMIT)
    archive.add("data.pkl", tensor_pickle(spec))
    archive.add(".format_version", b"1")
    archive.add(".storage_alignment", b"64")
    archive.add("byteorder", b"little")
    archive.stream("data/0", _span_blocks(chunk) if isinstance(chunk, FileSpan) else [chunk], size)
    archive.add("version", b"3\n")
    archive.add(".data/serialization_id", archive.serialization_id())
    archive.close()
    return archive.at
