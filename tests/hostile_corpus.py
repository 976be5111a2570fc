"""A malicious and malformed corpus, built from a few lines of pickle / struct / zipfile each (no binary blobs).

Each case writes one file (or folder) and states the outcome a reader must give: ``None`` for a file that
reads, or a fragment of the one-line error. ``tests/test_hostile_reading.py`` runs every case through the
library and the CLI; ``benchmarks/fuzz_readers.py`` mutates the valid seeds.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

# -- raw pickle opcodes, to say exactly what a hostile file says ------------------------------------------------


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def raw_text(raw: bytes) -> bytes:
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    return b"J" + struct.pack("<i", value) if -2**31 <= value < 2**31 else b"\x8a\x08" + struct.pack("<q", value)


def put(slot: int) -> bytes:
    return b"r" + struct.pack("<I", slot)


def get(slot: int) -> bytes:
    return b"j" + struct.pack("<I", slot)


PROTO, STOP, MARK, TUPLE, REDUCE, BUILD, NEWOBJ = b"\x80\x02", b".", b"(", b"t", b"R", b"b", b"\x81"
EMPTY_DICT, EMPTY_TUPLE, SETITEM, SETITEMS, NONE, POP = b"}", b")", b"s", b"u", b"N", b"0"
TUPLE1, TUPLE2 = b"\x85", b"\x86"


def one_key(key: bytes, value: bytes) -> bytes:
    """A pickle of ``{key: value}`` from opcodes."""
    return PROTO + EMPTY_DICT + key + value + SETITEM + STOP


def numpy_array_pickle() -> bytes:
    import numpy as np

    return pickle.dumps({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, protocol=2)


# -- hostile pickles ------------------------------------------------------------------------------------------

def build_on_allowed_function() -> bytes:
    """BUILD with slot state on torch._utils._rebuild_parameter: would set its __defaults__ for the process."""
    state = NONE + EMPTY_DICT + text("__defaults__") + integer(7) + TUPLE1 + SETITEM + TUPLE2
    return PROTO + glob("torch._utils", "_rebuild_parameter") + state + BUILD + POP + numpy_body()


def build_on_allowed_class() -> bytes:
    """BUILD with slot state on collections.OrderedDict: would add an attribute to our stand-in class."""
    state = NONE + EMPTY_DICT + text("keys") + NONE + SETITEM + TUPLE2
    return PROTO + glob("collections", "OrderedDict") + state + BUILD + POP + numpy_body()


def numpy_body() -> bytes:
    """The rest of a pickle after a hostile prefix: a benign ``{'w': ndarray}`` (protocol 2 frames dropped)."""
    return numpy_array_pickle()[2:]


def ndarray_newobj() -> bytes:
    """NEWOBJ on numpy.ndarray: an array of 8192 float32 whose memory the file never filled."""
    return one_key(text("w"), glob("numpy", "ndarray") + MARK + integer(8192) + TUPLE + TUPLE1 + NEWOBJ)


def ndarray_called() -> bytes:
    """numpy.ndarray((1<<20,)) through REDUCE: 1 MiB of whatever the heap held."""
    return one_key(text("w"), glob("numpy", "ndarray") + MARK + integer(1 << 20) + TUPLE + TUPLE1 + REDUCE)


def bytearray_bomb() -> bytes:
    """33 bytes asking bytearray for 3.8 GB."""
    return PROTO + glob("builtins", "bytearray") + integer(3_800_000_000) + TUPLE1 + REDUCE + STOP


def shared_dict_fanout(width: int = 40, levels: int = 60) -> bytes:
    """Each level a dict of ``width`` keys all holding the next level: width**levels paths in a few KB."""
    parts = [PROTO, EMPTY_DICT, put(0)]
    for level in range(1, levels):
        parts += [EMPTY_DICT, put(level), MARK]
        parts += [text(f"k{key}") + get(level - 1) for key in range(width)]
        parts += [SETITEMS, POP]
    return b"".join(parts) + get(levels - 1) + STOP


def _module(slot: int, children: bytes) -> bytes:
    """A stand-in nn.Module (``pkg.Net``) with no parameters and the given ``_modules`` items, memo ``slot``."""
    return (glob("pkg", "Net") + EMPTY_TUPLE + NEWOBJ + put(slot) + EMPTY_DICT + text("_parameters") + EMPTY_DICT
            + SETITEM + text("_buffers") + EMPTY_DICT + SETITEM + text("_modules") + EMPTY_DICT + MARK + children
            + SETITEMS + SETITEM + BUILD)


def module_fanout(levels: int = 40) -> bytes:
    """Modules whose two children are the same module, ``levels`` deep: 2**levels paths."""
    parts = [PROTO, _module(0, b"")]
    parts += [POP + _module(level, text("a") + get(level - 1) + text("b") + get(level - 1)) for level in range(1, levels)]
    return b"".join(parts) + STOP


def module_cycle() -> bytes:
    """A module that is its own child."""
    inner = (glob("pkg", "Net") + EMPTY_TUPLE + NEWOBJ + put(0) + EMPTY_DICT + text("_parameters") + EMPTY_DICT
             + SETITEM + text("_buffers") + EMPTY_DICT + SETITEM + text("_modules") + EMPTY_DICT + text("me")
             + get(0) + SETITEM + SETITEM + BUILD)
    return PROTO + inner + STOP


def nested_modules(depth: int = 50_000) -> bytes:
    """A chain of ``depth`` modules each holding the next (built bottom-up, so the pickle itself stays flat)."""
    parts = [PROTO, _module(0, b"")]
    parts += [POP + _module(level, text("m") + get(level - 1)) for level in range(1, depth)]
    return b"".join(parts) + STOP


def stub_call_amplifier(width: int = 20_000, calls: int = 20_000) -> bytes:
    """One memoised tuple of ``width`` items handed to a stand-in class ``calls`` times (each call copies it)."""
    call = glob("pkg", "Thing") + get(0) + REDUCE
    return PROTO + MARK + NONE * width + TUPLE + put(0) + POP + b"]" + MARK + call * calls + b"e" + STOP


def memo_bomb() -> bytes:
    """LONG_BINPUT 1,260,917,361: CPython's unpickler would size (and zero) its memo for that index, ~20 GB."""
    return PROTO + EMPTY_DICT + b"r" + struct.pack("<I", 1_260_917_361) + STOP


def text_memo_bomb() -> bytes:
    """The same through protocol 0's PUT."""
    return b"(dp4000000000\n."


def surrogate_key_pickle() -> bytes:
    """A state dict whose key is a lone surrogate (invalid UTF-8 in the pickle), holding a real array."""
    import numpy as np

    body = pickle.dumps(np.ones(3, dtype=np.float32), protocol=2)[2:-1]
    return PROTO + EMPTY_DICT + raw_text(b"bad\xed\xa0\x80key") + body + SETITEM + STOP


# -- torch zip files with hand-made pickles ----------------------------------------------------------------------

class _Storage:
    def __init__(self, numel: int, kind: str = "FloatStorage") -> None:
        self.numel, self.kind = numel, kind


class _Tensor:
    """Pickles as torch does: ``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""

    def __init__(self, storage: _Storage, offset: object, size: object, stride: object, dtype: str | None = None):
        self.args = (storage, offset, size, stride)
        self.dtype = dtype   # set: torch >= 2.4's _rebuild_tensor_v3 over an untyped storage

    def __reduce__(self) -> tuple:
        import torch
        import torch._utils

        if self.dtype is not None:
            return torch._utils._rebuild_tensor_v3, (*self.args, False, collections.OrderedDict(),
                                                     getattr(torch, self.dtype))
        return torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, _Storage):
            import torch

            return ("storage", getattr(torch, obj.kind), "0", "cpu", obj.numel)
        return None


def torch_zip(path: Path, tensors: dict[str, _Tensor], record: bytes, *, crc_of: bytes | None = None) -> Path:
    """A torch zip checkpoint ``archive/`` with one storage record ``data/0`` (written with its CRC, or the CRC
    of ``crc_of`` to make a damaged record)."""
    import io

    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(tensors)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", crc_of if crc_of is not None else record)
        archive.writestr("archive/version", "3\n")
    if crc_of is not None:   # swap the bytes after the CRC was computed: a damaged record
        data = path.read_bytes()
        at = data.index(crc_of)
        path.write_bytes(data[:at] + record + data[at + len(record):])
    return path


def geometry_zip(path: Path, offset: object = 0, size: object = (2, 2), stride: object = (2, 1),
                 numel: int = 4, kind: str = "FloatStorage", record_bytes: int = 16, dtype: str | None = None) -> Path:
    tensor = _Tensor(_Storage(numel, kind), offset, size, stride, dtype)
    return torch_zip(path, {"w": tensor}, b"\0" * record_bytes)


# -- safetensors with hand-made headers ------------------------------------------------------------------------

def safetensors_bytes(header: object, data: bytes, *, raw_header: bytes | None = None) -> bytes:
    text_ = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text_)) + text_ + data


def st_entry(begin: int, end: int, shape: list, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def valid_safetensors() -> bytes:
    return safetensors_bytes({"__metadata__": {"format": "pt"}, "a": st_entry(0, 16, [2, 2]),
                              "b": st_entry(16, 24, [2])}, bytes(range(24)))


# -- the cases ------------------------------------------------------------------------------------------------

class Case(NamedTuple):
    name: str
    suffix: str
    build: Callable[[], bytes]
    refusal: str | None      # a fragment of the one-line error, or None: the file reads


PICKLE_CASES = [
    Case("build_on_allowed_function", ".pkl", build_on_allowed_function,
         "sets state (BUILD) on the allowed global torch._utils._rebuild_parameter"),
    Case("build_on_allowed_class", ".pkl", build_on_allowed_class,
         "sets state (BUILD) on the allowed global collections.OrderedDict"),
    Case("ndarray_newobj", ".pkl", ndarray_newobj, "NEWOBJ class argument must be a type"),
    Case("ndarray_called", ".pkl", ndarray_called, "builds a numpy.ndarray without data from the file"),
    Case("bytearray_bomb", ".pkl", bytearray_bomb, "(limit CKPTSURGEON_MAX_ALLOC)"),
    Case("shared_dict_fanout", ".pkl", shared_dict_fanout, "no tensors found in this file"),
    Case("module_fanout", ".pkl", module_fanout, "(limit CKPTSURGEON_MAX_VISITS)"),
    Case("module_cycle", ".pkl", module_cycle, "module 'me' contains itself (a cycle)"),
    Case("nested_modules", ".pkl", nested_modules, "(limit CKPTSURGEON_MAX_DEPTH)"),
    Case("stub_call_amplifier", ".pkl", stub_call_amplifier, "(limit CKPTSURGEON_MAX_OBJECTS)"),
    Case("memo_bomb", ".pkl", memo_bomb, "memo index 1260917361 at offset 4 is larger than anything a pickler"),
    Case("text_memo_bomb", ".pkl", text_memo_bomb, "memo index 4000000000 at offset 3"),
    Case("numpy_array", ".pkl", numpy_array_pickle, None),
]

_DATA = bytes(range(24))
SAFETENSORS_CASES = [
    Case("st_valid", ".safetensors", valid_safetensors, None),
    Case("st_overlap", ".safetensors", lambda: safetensors_bytes(
        {"a": st_entry(0, 16, [4]), "b": st_entry(8, 16, [2])}, _DATA[:16]), "overlaps the tensor before it"),
    Case("st_gap", ".safetensors", lambda: safetensors_bytes(
        {"a": st_entry(0, 8, [2]), "b": st_entry(16, 24, [2])}, _DATA), "leaves a gap of 8 bytes before it"),
    Case("st_trailing", ".safetensors", lambda: safetensors_bytes(
        {"a": st_entry(0, 16, [4])}, _DATA), "8 bytes follow the last tensor"),
    Case("st_duplicate_key", ".safetensors", lambda: safetensors_bytes(None, _DATA[:16], raw_header=(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}')), "duplicate key 'a'"),
    Case("st_out_of_range", ".safetensors", lambda: safetensors_bytes(
        {"a": st_entry(0, 64, [16])}, _DATA), "'a' needs 64 bytes at"),
    Case("st_metadata_not_object", ".safetensors", lambda: safetensors_bytes(
        {"__metadata__": ["x"], "a": st_entry(0, 24, [6])}, _DATA), "__metadata__ must be an object of strings"),
    Case("st_metadata_not_strings", ".safetensors", lambda: safetensors_bytes(
        {"__metadata__": {"epoch": 3}, "a": st_entry(0, 24, [6])}, _DATA), "__metadata__ must be an object of strings"),
    Case("st_deep_json", ".safetensors", lambda: safetensors_bytes(
        None, _DATA, raw_header=b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nests too deep"),
    Case("st_surrogate_key", ".safetensors", lambda: safetensors_bytes(
        None, _DATA, raw_header=b'{"\\ud800":{"dtype":"F32","shape":[6],"data_offsets":[0,24]}}'),
         "bad safetensors entry for '\\ud800'"),
]

TORCH_ZIP_CASES = [
    ("zip_valid", {}, None),
    ("zip_negative_shape", {"size": (-2, 2)}, "a tensor's shape is (-2, 2)"),
    ("zip_float_shape", {"size": (2.0, 2)}, "a tensor's shape is (2.0, 2)"),
    ("zip_negative_stride", {"stride": (2, -1)}, "a tensor's stride is (2, -1)"),
    ("zip_negative_offset", {"offset": -1}, "a tensor's storage offset is -1"),
    ("zip_stride_length", {"stride": (1,)}, "a tensor's stride (for shape (2, 2)) is (1,)"),
    ("zip_past_storage", {"size": (4, 4), "stride": (4, 1)}, "past its storage"),
    ("zip_record_not_elements", {"record_bytes": 15},
     "storage record data/0 holds 15 bytes, but the pickle declares 4 float32 (16 bytes)"),
    ("zip_record_short", {"record_bytes": 8}, "storage record data/0 holds 8 bytes, but the pickle declares 4 float32"),
    ("zip_untyped_not_elements", {"kind": "UntypedStorage", "numel": 15, "record_bytes": 15, "dtype": "float32"},
     "not a multiple of the element size"),
]


def write_case(case: Case, folder: Path) -> Path:
    path = folder / f"{case.name}{case.suffix}"
    path.write_bytes(case.build())
    return path


# -- fuzzing: mutations of small valid files (tests/test_hostile_fuzz.py, benchmarks/fuzz_readers.py) ----------

class Seed(NamedTuple):
    name: str
    suffix: str
    data: bytes


def fuzz_seeds() -> list[Seed]:
    """Small valid files of each reader: safetensors, torch zip, legacy torch, plain pickle of numpy arrays."""
    import io

    import numpy as np
    import torch

    def saved(obj: object, **options: object) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer, **options)
        return buffer.getvalue()

    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(2, 1, 3, 3), "conv.bias": torch.zeros(2), "steps": torch.tensor(3),
             "half": torch.ones(3, dtype=torch.float16), "view": torch.arange(6.0).reshape(2, 3).t()}
    return [
        Seed("safetensors", ".safetensors", valid_safetensors()),
        Seed("torch_zip", ".pt", saved(state)),
        Seed("torch_legacy", ".pt", saved(state, _use_new_zipfile_serialization=False)),
        Seed("numpy_pickle", ".pkl", pickle.dumps({"model": {"w": np.arange(4, dtype=np.float32),
                                                               "b": np.ones((2, 2))}}, protocol=2)),
    ]


_FIELD_VALUES: list[object] = [-1, 0, 1, 7, 2**31, 2**64, 2**70, 1.5, "F32", "X9", None, [], [1, 2], [-1], {}, "",
                               "\ud800"]


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Apply edits: ("flip", position, bit), ("cut", position, _), ("insert", position, byte),
    ("field", entry, value index): a safetensors header field set to a hostile value."""
    for kind, where, what in edits:
        if not data:
            break
        at = where % len(data)
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ (1 << (what % 8))]) + data[at + 1:]
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + bytes([what % 256]) + data[at:]
        elif kind == "field":
            data = _edit_header_field(data, where, what)
    return data


def _edit_header_field(data: bytes, where: int, what: int) -> bytes:
    try:
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + length])
    except (ValueError, struct.error, RecursionError):
        return data
    if not isinstance(header, dict) or not header:
        return data
    name = sorted(header)[where % len(header)]
    value = _FIELD_VALUES[what % len(_FIELD_VALUES)]
    entry = header[name]
    if isinstance(entry, dict) and entry:
        field = sorted(entry)[(where // 7) % len(entry)]
        if isinstance(entry[field], list) and entry[field] and what % 3 == 0:
            entry[field][(where // 3) % len(entry[field])] = value
        else:
            entry[field] = value
    else:
        header[name] = value
    text_ = json.dumps(header).encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(text_)) + text_ + data[8 + length:]


def fuzz_outcome(path: Path) -> str:
    """Read a mutated file as every command would; returns "accepted" or "refused: <ErrorClass>", and raises
    AssertionError for anything else (another exception, a tensor outside the file, a message not naming the file,
    a safetensors file the safetensors library refuses)."""
    from ckptsurgeon.errors import SurgeonError
    from ckptsurgeon.io import open_checkpoint

    try:
        with open_checkpoint(path) as checkpoint:
            shapes = _read_every_tensor(checkpoint, path)
    except SurgeonError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message, message
        return f"refused: {type(exc).__name__}"
    if path.suffix == ".safetensors":
        _safetensors_library_accepts(path, shapes)
    return "accepted"


def _read_every_tensor(checkpoint: object, path: Path) -> dict[str, tuple[int, ...]]:
    from ckptsurgeon.errors import SurgeonError
    from ckptsurgeon.io.refs import TensorRef
    from ckptsurgeon.io.tensors import extent_bytes

    size = path.stat().st_size
    shapes = {}
    for name in checkpoint:
        value = checkpoint._values[name]
        if isinstance(value, TensorRef):
            records = checkpoint.records_of(name)
            try:
                start, length = records.spans[value.key]
            except SurgeonError:
                continue   # the records are located on first read, and may be refused then
            assert 0 <= start and start + length <= size, (name, start, length, size)
            assert extent_bytes(value) <= length, (name, value, length)
        try:
            tensor = checkpoint[name]
        except SurgeonError:
            continue
        shapes[name] = tuple(tensor.shape)
    return shapes


def _safetensors_library_accepts(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "np") as handle:
        assert sorted(handle.keys()) == sorted(shapes), (sorted(handle.keys()), sorted(shapes))
        for name in handle.keys():
            assert tuple(handle.get_slice(name).get_shape()) == shapes[name], name
