"""Just enough of the zip format to read a torch checkpoint without reading all of it.

``zipfile`` parses the whole central directory up front (seconds for 100k records). A torch checkpoint
writes ``data.pkl`` first and stores every record uncompressed, so its pickle is found from the first
central-directory entries, and the byte ranges of the records are only computed when a tensor is read.
"""

from __future__ import annotations

import array
import mmap
import struct
from typing import Any, BinaryIO, Iterator, NamedTuple

from ..errors import CheckpointFormatError

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_LOCAL = struct.Struct("<4s5H3L2H")
STORED = 0


class Entry(NamedTuple):
    name: str
    compression: int
    size: int
    header_offset: int
    crc: int = 0


class ZipArchive:
    """A read-only view of a zip file through a memory map (no data is copied until asked for)."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as handle:
            try:
                self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # an empty file
                raise CheckpointFormatError(f"{path}: empty file") from exc
        self.cd_offset, self.cd_size, self.count = self._directory()

    def _directory(self) -> tuple[int, int, int]:
        tail_start = max(0, len(self.map) - _EOCD.size - 65535)
        at = self.map.rfind(b"PK\x05\x06", tail_start)
        if at < 0 or at + _EOCD.size > len(self.map):
            raise CheckpointFormatError(f"{self.path}: damaged zip archive (no end of central directory); "
                                        f"the file is truncated")
        _, _, _, _, count, size, offset, _ = _EOCD.unpack_from(self.map, at)
        if 0xFFFFFFFF in (size, offset) or count == 0xFFFF:
            offset, size, count = self._zip64(at)
        if offset + size > len(self.map):
            raise CheckpointFormatError(f"{self.path}: damaged zip archive (central directory past the end); "
                                        f"the file is truncated")
        return offset, size, count

    def _zip64(self, eocd_at: int) -> tuple[int, int, int]:
        locator = eocd_at - _EOCD64_LOCATOR.size
        if locator < 0 or self.map[locator:locator + 4] != b"PK\x06\x07":
            raise CheckpointFormatError(f"{self.path}: damaged zip64 archive (no zip64 locator)")
        record = _EOCD64_LOCATOR.unpack_from(self.map, locator)[2]
        if record + _EOCD64.size > len(self.map) or self.map[record:record + 4] != b"PK\x06\x06":
            raise CheckpointFormatError(f"{self.path}: damaged zip64 archive (no zip64 end record)")
        fields = _EOCD64.unpack_from(self.map, record)
        return fields[9], fields[8], fields[7]

    def entries(self, limit: int | None = None) -> Iterator[Entry]:
        """Central-directory entries in order (the first ``limit`` of them)."""
        at, end, seen = self.cd_offset, self.cd_offset + self.cd_size, 0
        while at + _CENTRAL.size <= end and (limit is None or seen < limit):
            fields = _CENTRAL.unpack_from(self.map, at)
            if fields[0] != b"PK\x01\x02":
                raise CheckpointFormatError(f"{self.path}: damaged zip central directory")
            name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
            name = self.map[at + _CENTRAL.size:at + _CENTRAL.size + name_len].decode("utf-8", "replace")
            size, offset = fields[9], fields[16]
            if 0xFFFFFFFF in (size, offset, fields[8]):
                size, offset = _zip64_extra(self.map[at + _CENTRAL.size + name_len:
                                                     at + _CENTRAL.size + name_len + extra_len], fields)
            yield Entry(name, fields[4], size, offset, fields[7])
            at += _CENTRAL.size + name_len + extra_len + comment_len
            seen += 1

    def record_table(self, prefix: str, *, crcs: bool = True) -> tuple["RecordSizes", dict[str, int]]:
        """Size and (with ``crcs``) CRC-32 of every entry under ``prefix`` (keyed by the rest of the name), from
        the central directory alone: a tight loop, as a torch zip may hold 100k records."""
        head, cut, view, unpack, fixed = prefix.encode(), len(prefix.encode()), self.map, _CENTRAL.unpack_from, _CENTRAL.size
        sizes = RecordSizes(min(self.count, self.cd_size // fixed))   # the count is the file's word: bounded
        checksums: dict[str, int] = {}
        at, end = self.cd_offset, self.cd_offset + self.cd_size
        while at + fixed <= end:
            fields = unpack(view, at)
            if fields[0] != b"PK\x01\x02":
                raise CheckpointFormatError(f"{self.path}: damaged zip central directory")
            name_end = at + fixed + fields[10]
            name = view[at + fixed:name_end]
            if name.startswith(head):
                size = fields[9]
                if 0xFFFFFFFF in (size, fields[16], fields[8]):
                    size = _zip64_extra(view[name_end:name_end + fields[11]], fields)[0]
                key = name[cut:].decode("utf-8", "replace")
                sizes.put(key, size)
                if crcs:
                    checksums[key] = fields[7]
            at = name_end + fields[11] + fields[12]
        return sizes, checksums

    def data_start(self, entry: Entry) -> int:
        """Where an entry's bytes begin: after its local header (whose extra field pads for alignment)."""
        if entry.header_offset + _LOCAL.size > len(self.map):
            raise CheckpointFormatError(f"{self.path}: truncated at record {entry.name}")
        fields = _LOCAL.unpack_from(self.map, entry.header_offset)
        if fields[0] != b"PK\x03\x04":
            raise CheckpointFormatError(f"{self.path}: damaged local header for {entry.name}")
        name_and_extra: int = fields[9] + fields[10]
        return entry.header_offset + _LOCAL.size + name_and_extra

    def stream(self, entry: Entry) -> BinaryIO:
        """A file positioned at an entry's bytes (a pickle reads only what it needs: no copy of it all)."""
        start = self._checked_start(entry)
        handle = open(self.path, "rb")
        handle.seek(start)
        return handle

    def _checked_start(self, entry: Entry) -> int:
        if entry.compression != STORED:
            raise CheckpointFormatError(f"{self.path}: record {entry.name} is compressed; torch writes records "
                                        f"uncompressed, so re-save the checkpoint with torch.save")
        start = self.data_start(entry)
        if start + entry.size > len(self.map):
            raise CheckpointFormatError(f"{self.path}: record {entry.name} runs past the end; the file is truncated")
        return start

    def read(self, entry: Entry) -> bytes:
        start = self._checked_start(entry)
        return self.map[start:start + entry.size]

    def close(self) -> None:
        self.map.close()


class RecordSizes:
    """Record sizes by name, compact for torch's numbered records ("0", "1", ...: 8 bytes each in an array,
    where a dict would take some 100 bytes a record at 100k records)."""

    __slots__ = ("numbered", "named")

    def __init__(self, count: int) -> None:
        self.numbered = array.array("q", [-1]) * max(count, 0)
        self.named: dict[str, int] = {}

    def put(self, key: str, size: int) -> None:
        if key.isdigit() and key == str(int(key)) and int(key) < len(self.numbered):
            self.numbered[int(key)] = size
        else:
            self.named[key] = size

    def get(self, key: str) -> int | None:
        if key.isdigit() and key == str(int(key)) and int(key) < len(self.numbered):
            size = self.numbered[int(key)]
            return None if size < 0 else size
        return self.named.get(key)


def _zip64_extra(extra: bytes, fields: tuple[Any, ...]) -> tuple[int, int]:
    size, offset = fields[9], fields[16]
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, at)
        if tag == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            if fields[9] == 0xFFFFFFFF:   # uncompressed size first, then compressed size, then offset
                size = values.pop(0)
            if fields[8] == 0xFFFFFFFF and values:
                values.pop(0)
            if fields[16] == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        at += 4 + length
    return size, offset
