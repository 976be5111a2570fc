"""Byte access to the tensor records of a checkpoint file, memory-mapped and read lazily."""

from __future__ import annotations

import mmap
import os
from typing import Callable, Protocol


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
