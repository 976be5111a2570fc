"""torch.save files: the zip format (torch >= 1.6) and the legacy format before it.

Only the pickle is parsed; tensor bytes stay in the file and are located by record name and offset.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import struct
from typing import Any, Iterator

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE
from .limits import Budget
from .picklescan import check_pickle
from .records import MappedRecords
from .refs import StorageRef
from .unpickler import SafeUnpickler
from .ziparchive import STORED, Entry, ZipArchive

from .reader import LEGACY_MAGIC


class Unpickled:
    """What a checkpoint's pickle held, with where its tensor bytes are."""

    def __init__(self, root: Any, records: MappedRecords, stubbed: dict[str, int]) -> None:
        self.root = root
        self.records = records
        self.stubbed = stubbed


def read_torch_zip(path: str, budget: Budget, *, check: bool = False) -> Unpickled:
    """Parse the ``data.pkl`` of a torch zip checkpoint without running its code.

    Reads the end of the file, the first central-directory entries and the pickle; the byte ranges of
    the tensor records are located by the caller's first look at them. With ``check``, each record's
    CRC-32 is verified when it is first read.
    """
    archive = ZipArchive(path)
    try:
        head = list(archive.entries(limit=8))
        pickled = _find(head, "data.pkl") or _find(archive.entries(), "data.pkl")
        if pickled is None:
            raise CheckpointFormatError(f"{path}: a zip file, but not a torch checkpoint (no data.pkl inside)")
        root = pickled.name[: -len("data.pkl")]
        order = next((e for e in head if e.name == root + "byteorder"), None)
        if order is not None:
            _check_byteorder(archive.read(order), path)
        start = archive.data_start(pickled)
        check_pickle(archive.map, start, path, end=start + pickled.size)
        sizes, _ = archive.record_table(root + "data/", crcs=False)
        with archive.stream(pickled) as pickle_bytes:
            # Each storage is checked against its record as the pickle declares it (its tensors are checked
            # against the storage as they are rebuilt), so every command agrees with inspect.
            unpickler = SafeUnpickler(pickle_bytes, storage_key=lambda pid: str(pid[2]), record_sizes=sizes,
                                      budget=budget)
            obj = _load(unpickler, path)
    finally:
        archive.close()
    del sizes   # 100k records: not kept once checked
    records = MappedRecords(path, locate=lambda: _record_spans(path, root + "data/"),
                            crcs=lambda: _record_crcs(path, root + "data/"), check=check)
    return Unpickled(obj, records, unpickler.stubbed)


def _record_crcs(path: str, prefix: str) -> dict[str, int]:
    archive = ZipArchive(path)
    try:
        return archive.record_table(prefix, crcs=True)[1]
    finally:
        archive.close()


def _find(entries: Any, suffix: str) -> Entry | None:
    return next((entry for entry in entries if entry.name.endswith(suffix)), None)


def _check_byteorder(raw: bytes, path: str) -> None:
    order = raw.decode("ascii", "replace").strip()
    if order == "big":
        raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported; re-save it on a little-endian machine")
    if order != "little":
        raise CheckpointFormatError(f"{path}: damaged byteorder record ({order[:16]!r}); the file is damaged")


def _record_spans(path: str, prefix: str) -> dict[str, tuple[int, int]]:
    """Where each stored (uncompressed) record's bytes lie in the file."""
    archive = ZipArchive(path)
    spans: dict[str, tuple[int, int]] = {}
    try:
        end = len(archive.map)
        for entry in archive.entries():
            if not entry.name.startswith(prefix):
                continue
            if entry.compression != STORED:
                raise CheckpointFormatError(f"{path}: record {entry.name} is compressed; torch writes records "
                                            f"uncompressed, so re-save the checkpoint with torch.save")
            start = archive.data_start(entry)
            if start + entry.size > end:
                raise CheckpointFormatError(f"{path}: record {entry.name} runs past the end; the file is truncated")
            spans[entry.name[len(prefix):]] = (start, entry.size)
    finally:
        archive.close()
    return spans


def read_torch_legacy(path: str, budget: Budget, *, check: bool = False) -> Unpickled:
    """Parse a pre-zip torch file: magic, protocol, sys info, the object, then raw storages."""
    with open(path, "rb") as handle, _mapped(path) as data:
        scanned = _Scanned(data, path)
        # One unpickler per pickle: from protocol 4 on, MEMOIZE numbers the memo from zero in each pickle.
        magic = _load(SafeUnpickler(scanned.at(handle), budget=budget), path)
        if magic != LEGACY_MAGIC:
            raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad legacy magic number)")
        _load(SafeUnpickler(scanned.at(handle), budget=budget), path)  # protocol version
        sys_info = _load(SafeUnpickler(scanned.at(handle), budget=budget), path)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
        unpickler = SafeUnpickler(scanned.at(handle), storage_key=lambda pid: str(pid[2]), remember_storages=True,
                                  budget=budget)
        obj = _load(unpickler, path)
        keys = _load(SafeUnpickler(scanned.at(handle), budget=budget), path)
        assert unpickler.storages is not None   # remember_storages=True
        spans = _legacy_spans(handle, keys, unpickler.storages, path)
    return Unpickled(obj, MappedRecords(path, spans), unpickler.stubbed)


def _legacy_spans(handle: Any, keys: Any, storages: dict[str, StorageRef], path: str) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    end = os.fstat(handle.fileno()).st_size
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CheckpointFormatError(f"{path}: the storage key list is {type(keys).__name__}, not a list of names; "
                                    f"the file is damaged")
    for key in keys:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointFormatError(f"{path}: truncated in the storage data")
        numel = struct.unpack("<q", raw)[0]
        ref = storages.get(str(key))
        size = numel * ELEMENT_SIZE.get(ref.dtype, 1) if ref else 0
        if ref is not None and ref.numel != numel:
            raise CheckpointFormatError(f"{path}: storage {key} holds {numel} elements, but the pickle declares "
                                        f"{ref.numel}; the file is damaged")
        if numel < 0 or handle.tell() + size > end:
            raise CheckpointFormatError(f"{path}: storage {key} claims {numel} elements, past the end of the file; "
                                        f"the file is truncated or damaged")
        spans[str(key)] = (handle.tell(), size)
        handle.seek(size, io.SEEK_CUR)
    return spans


def read_plain_pickle(path: str, budget: Budget, *, check: bool = False) -> Unpickled:
    """A pickle that is not a torch file: e.g. detectron2's ``{'model': {name: ndarray}}``."""
    with open(path, "rb") as handle, _mapped(path) as data:
        unpickler = SafeUnpickler(_Scanned(data, path).at(handle), budget=budget)
        obj = _load(unpickler, path)
    return Unpickled(obj, MappedRecords(path, {}), unpickler.stubbed)


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[Any]:
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data


class _Scanned:
    """Checks each pickle of a file (see picklescan) before the unpickler reads it from the same position."""

    def __init__(self, data: Any, path: str) -> None:
        self.data, self.path = data, path

    def at(self, handle: Any) -> Any:
        check_pickle(self.data, handle.tell(), self.path)
        return handle


def _load(unpickler: pickle.Unpickler, path: str) -> Any:
    try:
        return unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, RecursionError, UnicodeDecodeError, OverflowError,
            MemoryError, SystemError) as exc:   # SystemError: numpy's own setstate on damaged state
        detail = " ".join(str(exc).encode("ascii", "backslashreplace").decode().split())[:200]
        raise CheckpointFormatError(f"{path}: cannot parse the pickle ({type(exc).__name__}: {detail}); "
                                    f"the file may be truncated or not a checkpoint") from exc
