"""torch.save files: the zip format (torch >= 1.6) and the legacy format before it.

Only the pickle is parsed; tensor bytes stay in the file and are located by record name and offset.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any

from ..errors import CheckpointFormatError
from ..specs import ELEMENT_SIZE
from .records import MappedRecords
from .unpickler import SafeUnpickler, StorageRef

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# What zipfile raises on a damaged archive (bad names, sizes, compression fields).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, UnicodeDecodeError,
               NotImplementedError, RuntimeError, zlib.error)  # RuntimeError: an "encrypted" member
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


class Unpickled:
    """What a checkpoint's pickle held, with where its tensor bytes are."""

    def __init__(self, root: Any, records: MappedRecords, stubbed: dict[str, int]) -> None:
        self.root = root
        self.records = records
        self.stubbed = stubbed


def read_torch_zip(path: str) -> Unpickled:
    """Parse the ``data.pkl`` of a torch zip checkpoint without running its code."""
    try:
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        raise CheckpointFormatError(f"{path}: damaged zip archive ({exc}); the file may be truncated") from exc
    with archive:
        pickles = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
        if not pickles:
            raise CheckpointFormatError(f"{path}: a zip file, but not a torch checkpoint (no data.pkl inside)")
        root = pickles[0].filename[: -len("data.pkl")]
        _check_byteorder(archive, root, path)
        unpickler = SafeUnpickler(io.BytesIO(_read_member(archive, pickles[0], path)),
                                  storage_key=lambda pid: str(pid[2]))
        obj = _load(unpickler, path)
        spans = _record_spans(archive, root + "data/", path)
    return Unpickled(obj, MappedRecords(path, spans), unpickler.stubbed)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> bytes:
    try:
        return archive.read(info)
    except _ZIP_ERRORS as exc:
        raise CheckpointFormatError(f"{path}: cannot read {info.filename} ({exc}); the file may be truncated") from exc


def _check_byteorder(archive: zipfile.ZipFile, root: str, path: str) -> None:
    try:
        info = archive.getinfo(root + "byteorder")
    except KeyError:
        return
    order = _read_member(archive, info, path).decode("ascii", "replace").strip()
    if order == "big":
        raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported; re-save it on a little-endian machine")
    if order != "little":
        raise CheckpointFormatError(f"{path}: damaged byteorder record ({order[:16]!r}); the file is damaged")


def _record_spans(archive: zipfile.ZipFile, prefix: str, path: str) -> dict[str, tuple[int, int]]:
    """Offsets of each stored (uncompressed) record's data inside the file."""
    spans: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as handle:
        for info in archive.infolist():
            if not info.filename.startswith(prefix):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointFormatError(f"{path}: record {info.filename} is compressed; torch writes records "
                                            f"uncompressed, so re-save the checkpoint with torch.save")
            handle.seek(info.header_offset)
            header = handle.read(_LOCAL_HEADER.size)
            if len(header) < _LOCAL_HEADER.size:
                raise CheckpointFormatError(f"{path}: truncated at record {info.filename}")
            fields = _LOCAL_HEADER.unpack(header)
            start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
            spans[info.filename[len(prefix):]] = (start, info.file_size)
    return spans


def read_torch_legacy(path: str) -> Unpickled:
    """Parse a pre-zip torch file: magic, protocol, sys info, the object, then raw storages."""
    with open(path, "rb") as handle:
        # One unpickler per pickle: from protocol 4 on, MEMOIZE numbers the memo from zero in each pickle.
        magic = _load(SafeUnpickler(handle), path)
        if magic != LEGACY_MAGIC:
            raise CheckpointFormatError(f"{path}: not a torch checkpoint (bad legacy magic number)")
        _load(SafeUnpickler(handle), path)  # protocol version
        sys_info = _load(SafeUnpickler(handle), path)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
        unpickler = SafeUnpickler(handle, storage_key=lambda pid: str(pid[2]))
        obj = _load(unpickler, path)
        keys = _load(SafeUnpickler(handle), path)
        spans = _legacy_spans(handle, keys, unpickler.storages, path)
    return Unpickled(obj, MappedRecords(path, spans), unpickler.stubbed)


def _legacy_spans(handle: Any, keys: Any, storages: dict[str, StorageRef], path: str) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    end = os.fstat(handle.fileno()).st_size
    for key in keys if isinstance(keys, list) else ():
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointFormatError(f"{path}: truncated in the storage data")
        numel = struct.unpack("<q", raw)[0]
        ref = storages.get(str(key))
        size = numel * ELEMENT_SIZE.get(ref.dtype, 1) if ref else 0
        if numel < 0 or handle.tell() + size > end:
            raise CheckpointFormatError(f"{path}: storage {key} claims {numel} elements, past the end of the file; "
                                        f"the file is truncated or damaged")
        spans[str(key)] = (handle.tell(), size)
        handle.seek(size, io.SEEK_CUR)
    return spans


def read_plain_pickle(path: str) -> Unpickled:
    """A pickle that is not a torch file: e.g. detectron2's ``{'model': {name: ndarray}}``."""
    with open(path, "rb") as handle:
        unpickler = SafeUnpickler(handle)
        obj = _load(unpickler, path)
    return Unpickled(obj, MappedRecords(path, {}), unpickler.stubbed)


def _load(unpickler: pickle.Unpickler, path: str) -> Any:
    try:
        return unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, RecursionError, UnicodeDecodeError, OverflowError,
            MemoryError) as exc:
        raise CheckpointFormatError(f"{path}: cannot parse the pickle ({type(exc).__name__}: {exc}); "
                                    f"the file may be truncated or not a checkpoint") from exc
