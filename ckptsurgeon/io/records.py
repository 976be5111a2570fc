"""Byte access to the tensor records of a checkpoint file, memory-mapped and read lazily."""

from __future__ import annotations

import contextlib
import contextvars
import mmap
import os
import zlib
from typing import BinaryIO, Callable, Iterator, NamedTuple, Protocol

from ..errors import CheckpointFormatError
from ..runtime import setting

COPY_CHUNK = 64 * 1024 * 1024
CHECK_CHUNK = 4 * 1024 * 1024

# Whether readers verify zip CRC-32s by default (``--check``); see checking().
CHECK_CRC: contextvars.ContextVar[bool] = contextvars.ContextVar("ckptsurgeon_check_crc", default=False)


@contextlib.contextmanager
def checking(enabled: bool = True) -> Iterator[None]:
    """Within this block, checkpoints opened without an explicit ``check=`` verify their CRC-32s."""
    with setting(CHECK_CRC, enabled):
        yield


class FileSpan(NamedTuple):
    """Bytes that lie as they are in a file: copied file to file by the kernel, never through Python."""

    path: str
    offset: int
    length: int


def copy_span(span: FileSpan, handle: BinaryIO) -> None:
    """Append ``span`` to ``handle`` with ``copy_file_range`` (no page faults, no user-space copy), or by
    reading through a memory map where the kernel or file system cannot."""
    handle.flush()
    out = handle.fileno()
    position = os.lseek(out, 0, os.SEEK_CUR)
    with open(span.path, "rb") as source:
        done = 0
        try:
            while done < span.length:
                copied = os.copy_file_range(source.fileno(), out, span.length - done, span.offset + done, position + done)
                if copied == 0:
                    break
                done += copied
        except (AttributeError, OSError):
            pass
        os.lseek(out, position + done, os.SEEK_SET)
        if done < span.length:
            source.seek(span.offset + done)
            while done < span.length:
                block = source.read(min(COPY_CHUNK, span.length - done))
                if not block:
                    raise OSError(f"{span.path}: ended {span.length - done} bytes early")
                handle.write(block)
                done += len(block)


class RecordStore(Protocol):
    """Where the bytes of each storage record of one file are."""

    path: str

    def buffer(self, key: str) -> memoryview:
        """The record's bytes, zero-copy where the format allows."""

    def close(self) -> None:
        """Release the file; views already handed out stay valid."""


class MappedRecords:
    """Records at known (offset, length) places in one file, served from a private memory map.

    The map is copy-on-write (``ACCESS_COPY``): tensors built on it are writable without ever
    touching the file, and pages only read stay file-backed, so they cost no private memory.
    """

    def __init__(self, path: str, spans: dict[str, tuple[int, int]] | None = None, *,
                 locate: Callable[[], dict[str, tuple[int, int]]] | None = None,
                 sizes: dict[str, int] | None = None,
                 crcs: Callable[[], dict[str, int]] | None = None, check: bool = False) -> None:
        self.path = path
        self._spans = spans
        self._sizes = sizes     # record sizes known before the spans are located (a zip's central directory)
        self._locate = locate   # computes the spans on first use (a torch zip's records)
        self._map: mmap.mmap | None = None
        self._crc_table = crcs  # reads a zip's CRC-32 per record, on first need
        self.crcs: dict[str, int] | None = None
        self.check = check and crcs is not None
        self._verified: set[str] = set()

    @property
    def spans_loaded(self) -> bool:
        return self._spans is not None

    @property
    def sizes(self) -> dict[str, int] | None:
        """Each record's size in bytes, when known without locating the records."""
        if self._sizes is None and self._spans is not None:
            self._sizes = {key: length for key, (_, length) in self._spans.items()}
        return self._sizes

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        if self._spans is None:
            self._spans = self._locate() if self._locate else {}
        return self._spans

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            with open(self.path, "rb") as handle:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._map

    def buffer(self, key: str) -> memoryview:
        start, length = self.spans[key]
        if length == 0:
            return memoryview(b"")
        if self.check:
            self.verify(key)
        return memoryview(self._mapped())[start:start + length]

    def verify(self, key: str, handle: BinaryIO | None = None) -> None:
        """Check a record's CRC-32 against the zip's (once per record). Read in chunks through a file, not the
        map, so checking a large file costs no resident memory."""
        if key in self._verified or self._crc_table is None:
            return
        if self.crcs is None:
            self.crcs = self._crc_table()
        if handle is None:
            with open(self.path, "rb", buffering=0) as own:
                return self.verify(key, own)
        start, length = self.spans[key]
        crc, done = 0, 0
        handle.seek(start)
        while done < length:
            block = handle.read(min(CHECK_CHUNK, length - done))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            done += len(block)
        if crc != self.crcs.get(key, crc) or done < length:
            raise CheckpointFormatError(f"{self.path}: record data/{key} fails its CRC-32 check (stored "
                                        f"{self.crcs[key]:08x}, computed {crc:08x}); the file is damaged")
        self._verified.add(key)

    def verify_all(self) -> int:
        """Check every record's CRC-32 in file order; returns how many were checked (0 without CRCs)."""
        if self._crc_table is None:
            return 0
        with open(self.path, "rb", buffering=0) as handle:
            for key, _ in sorted(self.spans.items(), key=lambda item: item[1][0]):
                self.verify(key, handle)
        return len(self.spans)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # tensors still view it; the map goes when they do
                pass
            self._map = None


def file_size(path: str) -> int:
    return os.stat(path).st_size
