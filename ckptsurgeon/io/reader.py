"""One entry point for every checkpoint format: what is in the file, and its tensors on demand."""

from __future__ import annotations

import os
import stat
from typing import Any, Iterator, Mapping, NamedTuple

from ..errors import CheckpointFormatError, ContainerError
from ..runtime import paused_gc
from ..specs import ELEMENT_SIZE, TensorSpec, spec_of
from .limits import Budget, Limits
from .prefixes import strip_wrapper_prefixes
from .records import CHECK_CRC, FileSpan, MappedRecords, RecordStore
from .refs import TensorRef
from .safetensors_file import read_safetensors_header
from .shards import read_weight_map, shard_path
from .tensors import contiguous_bytes, contiguous_span, extent_bytes, materialize

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C   # the first pickle of a pre-zip torch file

# A legacy file starts with the pickled magic number: binary (protocol 2+, after a FRAME from 4 on) or text (0/1).
_LEGACY_MAGIC_BINARY = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
_LEGACY_MAGIC_TEXT = b"L%dL\n" % LEGACY_MAGIC
SINGLE_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")


class ContainerSummary(NamedTuple):
    path: str
    kind: str
    tensors: int
    chosen: bool


class CheckpointInfo(NamedTuple):
    """What the reader found and decided, for reports."""

    path: str
    format: str
    container: str | None = None
    container_reason: str = ""
    containers: tuple[ContainerSummary, ...] = ()
    stripped_prefixes: tuple[str, ...] = ()
    stubbed_globals: tuple[str, ...] = ()
    metadata: Mapping[str, str] = {}   # never mutated: safetensors metadata is copied in
    shards: tuple[str, ...] = ()
    trusted: bool = False
    container_kind: str = "state_dict"   # "module" when tensors came from a pickled nn.Module


class Checkpoint(Mapping[str, Any]):
    """A checkpoint's tensors by name, read lazily; ``specs`` and ``info`` cost no tensor data.

    Indexing returns a torch tensor (a copy-on-write view of the memory-mapped file where the format
    allows). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, values: dict[str, Any], records: RecordStore | dict[str, RecordStore],
                 info: CheckpointInfo) -> None:
        self._values = values      # name -> TensorRef / numpy array / torch tensor
        self._records = records    # one store, or one per name (sharded checkpoints)
        self.info = info
        self.specs: dict[str, TensorSpec] = {
            name: TensorSpec(name, value.shape, value.dtype) if isinstance(value, TensorRef) else spec_of(name, value)
            for name, value in values.items()}

    def records_of(self, name: str) -> RecordStore:
        return self._records[name] if isinstance(self._records, dict) else self._records

    def __getitem__(self, name: str) -> Any:
        return materialize(self._values[name], self.records_of(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def is_parameter(self, name: str) -> bool | None:
        """True/False where the file says (pickled modules), None where it cannot."""
        value = self._values[name]
        return value.is_parameter if isinstance(value, TensorRef) and self.info.container_kind == "module" else None

    def requires_grad(self, name: str) -> bool | None:
        """A pickled module's parameter's saved ``requires_grad``; None for buffers and plain state dicts."""
        return self._values[name].requires_grad if self.is_parameter(name) else None

    def raw_span(self, name: str) -> FileSpan | None:
        """Where the tensor's bytes lie in the file, when contiguous there (for file-to-file copies)."""
        return contiguous_span(self._values[name], self.records_of(name))

    def raw_bytes(self, name: str) -> memoryview | None:
        """The tensor's bytes straight from the file, when contiguous there (no torch needed)."""
        return contiguous_bytes(self._values[name], self.records_of(name))

    def _stores(self) -> list[RecordStore]:
        stores = self._records.values() if isinstance(self._records, dict) else [self._records]
        return list({id(r): r for r in stores}.values())

    def verify(self) -> int:
        """Check the CRC-32 of every record of a torch zip (reads all tensor bytes once); returns the number of
        records checked, 0 for formats that carry no checksums."""
        return sum(records.verify_all() for records in self._stores() if hasattr(records, "verify_all"))

    def close(self) -> None:
        for records in self._stores():
            records.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike[str], *, container: str | None = None, trust: bool = False,
                    check: bool | None = None, limits: Limits | None = None) -> Checkpoint:
    """Open any supported checkpoint: torch zip or legacy (.pt/.pth/.bin/...), pickle (.pkl),
    safetensors, a sharded folder / ``*.index.json``, or a torch.distributed.checkpoint folder (``.metadata``).

    Args:
        path: the file, or a folder holding one checkpoint or a sharded index.
        container: which state dict to use when the file holds several (``ema``, ``model``, a dotted path).
        trust: run the pickle's own code (``torch.load(weights_only=False)``). Only for files you trust.
        check: verify the CRC-32 of each torch zip record as it is read (default: ``checking()``'s setting).
        limits: reading limits (default: :class:`Limits` from the ``CKPTSURGEON_MAX_*`` environment variables).
    """
    path = os.fspath(path)
    limits = limits or Limits.from_env()
    check = CHECK_CRC.get() if check is None else check
    kind = detect_format(path, limits=limits)
    with paused_gc():
        if kind == "dcp":
            from .dcp import open_dcp

            return open_dcp(path, container, limits)
        if kind == "sharded":
            return _open_sharded(path, container, trust, check, limits)
        if kind == "safetensors":
            return _open_safetensors(path, container, limits)
        return _open_pickled(path, kind, container, trust, check, limits)


def read_specs(path: str | os.PathLike[str], **options: Any) -> tuple[dict[str, TensorSpec], CheckpointInfo]:
    """Names, shapes and dtypes only; no tensor data is read."""
    with open_checkpoint(path, **options) as checkpoint:
        return dict(checkpoint.specs), checkpoint.info


def verify_checkpoint(path: str | os.PathLike[str], **options: Any) -> int:
    """Check the CRC-32 of every record of a torch zip checkpoint (or of every shard); returns how many
    records were checked (0 for formats without checksums). Reads all tensor bytes once."""
    with open_checkpoint(path, **options) as checkpoint:
        return checkpoint.verify()


def detect_format(path: str, *, limits: Limits | None = None) -> str:
    """'torch-zip', 'torch-legacy', 'pickle', 'safetensors', 'sharded' or 'dcp' (a torch.distributed.checkpoint
    folder), from the bytes, not the name."""
    mode = _file_mode(path)
    if stat.S_ISDIR(mode) and os.path.isfile(os.path.join(path, ".metadata")):
        return "dcp"
    if stat.S_ISDIR(mode) or path.endswith(".index.json"):
        return "sharded"
    with open(path, "rb") as handle:
        head = handle.read(32)
    if not head:
        raise CheckpointFormatError(f"{path}: the file is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch-zip"
    if _is_legacy_torch(head):
        return "torch-legacy"
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 62:
        return "safetensors"  # a header length past the end is reported as truncation by the header reader
    if head.lstrip()[:1] in (b"{", b"["):
        raise CheckpointFormatError(f"{path}: a JSON file, not a checkpoint (a sharded index must end in .index.json)")
    if head[:1] == b"\x80" or head[:1] in b"(]}cK":
        return "pickle"
    raise CheckpointFormatError(f"{path}: not a recognised checkpoint (expected a torch zip, legacy torch file, "
                                f"pickle or safetensors)")


def _file_mode(path: str) -> int:
    """The file's mode; only regular files and folders are read (a FIFO or device would block or never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path}: cannot be read ({exc})") from exc
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CheckpointFormatError(f"{path}: not a regular file (a FIFO, device or socket); give a checkpoint file")
    return mode


def _is_legacy_torch(head: bytes) -> bool:
    if head.startswith(_LEGACY_MAGIC_TEXT):
        return True
    if not head.startswith(b"\x80"):
        return False
    body = head[2:]
    if body.startswith(b"\x95"):  # FRAME opcode and its 8-byte length
        body = body[9:]
    return body.startswith(_LEGACY_MAGIC_BINARY)


def _open_pickled(path: str, kind: str, container: str | None, trust: bool, check: bool,
                  limits: Limits) -> Checkpoint:
    from .containers import choose_candidate, find_candidates
    from .torchfile import Unpickled, read_plain_pickle, read_torch_legacy, read_torch_zip

    budget = Budget(path, limits)
    if trust:
        root, records, stubbed = _trusted_load(path, kind), MappedRecords(path, {}), {}
    else:
        reader = {"torch-zip": read_torch_zip, "torch-legacy": read_torch_legacy, "pickle": read_plain_pickle}[kind]
        unpickled: Unpickled = reader(path, budget, check=check)
        root, records, stubbed = unpickled.root, unpickled.records, unpickled.stubbed
    candidates = find_candidates(root, budget)
    if not candidates and stubbed:
        names = ", ".join(sorted(stubbed))
        raise CheckpointFormatError(f"{path}: no tensors could be recovered without running the file's code; it "
                                    f"names {names}. If you trust the file, pass --trust (trust=True)")
    chosen, reason = choose_candidate(candidates, container, path)
    tensors, stripped = strip_wrapper_prefixes(chosen.tensors)
    info = CheckpointInfo(path, kind, chosen.path, reason, _summaries(candidates, chosen), stripped,
                          tuple(sorted(stubbed)), trusted=trust, container_kind=chosen.kind)
    return Checkpoint(_checked_extents(tensors, records), records, info)


def _trusted_load(path: str, kind: str) -> Any:
    import pickle

    import torch

    try:
        if kind == "pickle":
            with open(path, "rb") as handle:
                return pickle.load(handle, encoding="latin1")
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the file's own code may raise anything
        raise CheckpointFormatError(f"{path}: loading with --trust failed ({type(exc).__name__}: {exc})") from exc


def _summaries(candidates: list[Any], chosen: Any) -> tuple[ContainerSummary, ...]:
    return tuple(ContainerSummary(c.path, c.kind, len(c.tensors), c is chosen) for c in candidates)


def _open_safetensors(path: str, container: str | None, limits: Limits) -> Checkpoint:
    if container:
        raise ContainerError(f"{path}: safetensors files hold one flat state dict; drop --container {container}")
    parsed = read_safetensors_header(path, max_header=limits.header)
    tensors, stripped = strip_wrapper_prefixes(dict(parsed.refs))
    info = CheckpointInfo(path, "safetensors", None, "", (), stripped, (), parsed.metadata)
    return Checkpoint(tensors, parsed.records, info)


def _checked_extents(values: dict[str, Any], records: MappedRecords) -> dict[str, Any]:
    """Refuse tensors whose bytes lie outside their record, or whose record is not a whole number of elements
    (a truncated or damaged file), so that every command agrees with ``inspect`` and reading cannot fail half-way.
    Metadata only: no tensor data is read."""
    if not records.spans_loaded:
        return values   # a torch zip: its storages were checked against their records as they were read
    sizes = records.sizes
    assert sizes is not None   # known once the spans are
    for name, value in values.items():
        if not isinstance(value, TensorRef):
            continue
        length = sizes.get(value.key)
        if length is None:
            raise CheckpointFormatError(f"{records.path}: '{name}' refers to storage record {value.key}, "
                                        f"which is not in the file; the file is damaged")
        if length % ELEMENT_SIZE.get(value.dtype, 1):
            raise CheckpointFormatError(f"{records.path}: '{name}' is {value.dtype}, but its record {value.key} holds "
                                        f"{length} bytes, not a multiple of the element size; the file is damaged")
        needed = extent_bytes(value)
        if value.offset < 0 or needed > length:
            raise CheckpointFormatError(f"{records.path}: '{name}' needs {needed} bytes but its record holds "
                                        f"{length}; the file is truncated or damaged")
    return values


def _open_sharded(path: str, container: str | None, trust: bool, check: bool, limits: Limits) -> Checkpoint:
    index_path = _find_index(path)
    if index_path is None:
        return _open_file(_single_file_in(path), container, trust, check, limits)
    weight_map = read_weight_map(index_path, limits)
    values: dict[str, Any] = {}
    stores: dict[str, RecordStore] = {}
    shards = list(dict.fromkeys(weight_map.values()))
    stubbed: set[str] = set()
    for shard in shards:
        part = _open_file(shard_path(index_path, shard), container, trust, check, limits)
        # The index names tensors as stored; undo a prefix the shard stripped on its own, strip once for all below.
        restore = "".join(part.info.stripped_prefixes)
        kept = [name for name in part if weight_map.get(restore + name) == shard]
        values.update({restore + name: part._values[name] for name in kept})
        stores.update({restore + name: part.records_of(name) for name in kept})
        stubbed.update(part.info.stubbed_globals)
    missing = [name for name in weight_map if name not in values]
    if missing:
        raise CheckpointFormatError(f"{index_path}: {len(missing)} tensors listed in the index are missing from "
                                    f"their shards, e.g. '{missing[0]}'")
    prefix_free, stripped = strip_wrapper_prefixes(values)
    stores = {name: stores[original] for name, original in zip(prefix_free, values)}
    values = prefix_free
    kind = "safetensors-sharded" if shards[0].endswith(".safetensors") else "torch-sharded"
    info = CheckpointInfo(index_path, kind, stripped_prefixes=stripped, stubbed_globals=tuple(sorted(stubbed)),
                          shards=tuple(shards), trusted=trust)
    return Checkpoint(values, stores, info)


def _open_file(path: str, container: str | None, trust: bool, check: bool, limits: Limits) -> Checkpoint:
    """A shard or the one checkpoint of a folder: a file, never a folder or index again (no recursion)."""
    kind = detect_format(path, limits=limits)
    if kind in ("sharded", "dcp"):
        raise CheckpointFormatError(f"{path}: a folder or index where a checkpoint file was expected")
    if kind == "safetensors":
        return _open_safetensors(path, container, limits)
    return _open_pickled(path, kind, container, trust, check, limits)


def _find_index(path: str) -> str | None:
    if path.endswith(".index.json"):
        if not stat.S_ISREG(_file_mode(path)):
            raise CheckpointFormatError(f"{path}: a folder, not a sharded index file")
        return path
    found = sorted(name for name in os.listdir(path) if name.endswith(".index.json"))
    return os.path.join(path, found[0]) if found else None


def _single_file_in(folder: str) -> str:
    for name in SINGLE_FILE_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    found = [n for n in sorted(os.listdir(folder)) if n.endswith((".safetensors", ".bin", ".pt", ".pth", ".pkl"))]
    if len(found) == 1:
        return os.path.join(folder, found[0])
    raise CheckpointFormatError(f"{folder}: a folder with no *.index.json and "
                                f"{'no' if not found else len(found)} checkpoint files; name the file to read")
