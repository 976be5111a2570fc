"""Byte access to the tensor records of a checkpoint file, memory-mapped and read lazily."""

from __future__ import annotations

import mmap
import os
from typing import BinaryIO, Callable, NamedTuple, Protocol

COPY_CHUNK = 64 * 1024 * 1024


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
                 locate: Callable[[], dict[str, tuple[int, int]]] | None = None) -> None:
        self.path = path
        self._spans = spans
        self._locate = locate   # computes the spans on first use (a torch zip's records)
        self._map: mmap.mmap | None = None

    @property
    def spans_loaded(self) -> bool:
        return self._spans is not None

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
        return memoryview(self._mapped())[start:start + length]

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # tensors still view it; the map goes when they do
                pass
            self._map = None


def file_size(path: str) -> int:
    return os.stat(path).st_size
