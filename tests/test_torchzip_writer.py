"""The streaming torch zip writer: what torch.save writes, byte for byte, one tensor in memory at a time."""

from __future__ import annotations

import collections
import io
import struct
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from ckptsurgeon.convert import convert_checkpoint
from ckptsurgeon.errors import CheckpointFormatError
from ckptsurgeon.io import open_checkpoint, verify_checkpoint
from ckptsurgeon.io.records import FileSpan
from ckptsurgeon.io.torchzip_writer import STREAMED_DTYPES, write_torch_zip_stream
from ckptsurgeon.io.writer import tensor_bytes, write_state_dict, write_streamed
from ckptsurgeon.specs import TensorSpec, spec_of

# Read back by torch; ckptsurgeon's own reader does not know these dtypes' globals (nor for torch.save files).
NOT_READ_BY_CKPTSURGEON = {"float8_e4m3fnuz", "float8_e5m2fnuz", "complex32"}


def sample(dtype_name: str, shape: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """Distinct values of any dtype (made in float64, then cast)."""
    values = torch.arange(1, 1 + int(np.prod(shape)), dtype=torch.float64).reshape(shape) * 0.75
    return values.to(getattr(torch, dtype_name)) if dtype_name != "bool" else values.long() % 2 == 1


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (torch.equal is not implemented for every dtype)."""
    return a.dtype == b.dtype and a.shape == b.shape and bytes(tensor_bytes(a)) == bytes(tensor_bytes(b))


def stream_bytes(state: dict[str, torch.Tensor], **options: Any) -> bytes:
    out = io.BytesIO()
    write_torch_zip_stream(out, [spec_of(k, v) for k, v in state.items()], (tensor_bytes(v) for v in state.values()),
                           **options)
    return out.getvalue()


def data_offsets(blob: bytes) -> dict[str, int]:
    """Where each record's data starts, from its local header (name and extra lengths)."""
    offsets = {}
    for info in zipfile.ZipFile(io.BytesIO(blob)).infolist():
        name_len, extra_len = struct.unpack_from("<2H", blob, info.header_offset + 26)
        offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
    return offsets


@pytest.mark.parametrize("dtype", sorted(STREAMED_DTYPES))
def test_every_dtype_round_trips_through_torch_and_ckptsurgeon(tmp_path: Path, dtype: str) -> None:
    state = {"w": sample(dtype), "scalar": sample(dtype, ()), "empty": sample(dtype, (0, 4))}
    out = write_state_dict(tmp_path / "out.pt", state)
    back = torch.load(out, weights_only=True)
    assert list(back) == list(state) and all(same(back[k], v) for k, v in state.items())
    if dtype in NOT_READ_BY_CKPTSURGEON:
        return
    with open_checkpoint(out, check=True) as checkpoint:
        assert checkpoint.specs == {k: spec_of(k, v) for k, v in state.items()}
        assert all(same(checkpoint[k], v) for k, v in state.items())


def test_odd_shapes_and_layouts_are_written_whole_and_contiguous(tmp_path: Path) -> None:
    storage = torch.arange(60, dtype=torch.float32)
    state = {"scalar": torch.tensor(3.5), "zero_rows": torch.zeros(0, 3), "zero_inner": torch.zeros(3, 0, 2),
             "transposed": storage[:12].reshape(3, 4).t(), "strided": storage[::7], "slice_of_big": storage[10:13],
             "5d": torch.randn(2, 1, 3, 1, 2)}
    out = write_state_dict(tmp_path / "out.pth", state)
    back = torch.load(out, weights_only=True)
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor) and back[name].is_contiguous()
        assert back[name].untyped_storage().nbytes() == tensor.numel() * tensor.element_size()   # no shared storage


def test_bytes_are_torch_saves_but_for_the_serialization_id() -> None:
    state: dict[str, torch.Tensor] = collections.OrderedDict(
        w=torch.randn(3, 4), h=torch.ones(2, dtype=torch.float16), n=torch.tensor(7), e=torch.zeros(0, 5),
        q=torch.zeros(3, dtype=torch.float8_e5m2), u=torch.arange(4).to(torch.uint32),
        b=torch.ones(1, dtype=torch.bool))
    for i in range(1101):   # memo past 256 (LONG_BINPUT) and SETITEMS batches of 1000 and a batch of one
        state[f"layer.{i}.bias"] = torch.full((i % 4,), float(i))
    state["big"] = torch.zeros(70_000)   # sizes past 65535 (BININT) in the pickle
    expected, ours = io.BytesIO(), stream_bytes(state)
    torch.save(state, expected)
    theirs = expected.getvalue()
    ref, mine = zipfile.ZipFile(expected), zipfile.ZipFile(io.BytesIO(ours))
    assert [i.filename for i in mine.infolist()] == [i.filename for i in ref.infolist()]
    assert [i.filename for i in ref.infolist()][:4] == ["archive/data.pkl", "archive/.format_version",
                                                         "archive/.storage_alignment", "archive/byteorder"]
    for info in ref.infolist():
        if not info.filename.endswith("serialization_id"):
            assert mine.read(info.filename) == ref.read(info.filename), info.filename
    assert data_offsets(ours) == data_offsets(theirs)
    assert all(offset % 64 == 0 for offset in data_offsets(ours).values())
    # Every byte equal but the id's 40 digits, its CRC in its data descriptor and in the central directory.
    sid = ref.getinfo("archive/.data/serialization_id")
    start = data_offsets(theirs)[sid.filename]
    central = ref.start_dir + sum(46 + len(i.filename) + len(i.extra) for i in ref.infolist()[:-1])
    allowed = {*range(start, start + 40), *range(start + 44, start + 48), *range(central + 16, central + 20)}
    assert len(ours) == len(theirs)
    assert {i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b} <= allowed
    assert len(mine.read(sid.filename)) == 40 and mine.read(sid.filename).isdigit()


def test_mmap_loading_maps_the_aligned_records(tmp_path: Path) -> None:
    state = {"a": torch.randn(5, dtype=torch.float64), "b": torch.arange(3, dtype=torch.int16),
             "c": torch.randn(7, dtype=torch.bfloat16), "d": torch.zeros(0)}
    out = write_state_dict(tmp_path / "out.pt", state)
    back = torch.load(out, mmap=True, weights_only=True)
    assert all(same(back[k], v) for k, v in state.items())
    offsets = data_offsets(Path(out).read_bytes())
    assert all(offset % 64 == 0 for offset in offsets.values())


def test_zip64_fields_are_read_by_zipfile_torch_and_ckptsurgeon(tmp_path: Path) -> None:
    """With the threshold lowered, sizes and offsets past it go into zip64 extra fields (0xFFFFFFFF in the
    32-bit fields, 24-byte data descriptors), as a record of 4 GiB or one past 4 GiB would."""
    state = {"small": torch.ones(2), "large": torch.randn(100), "later": torch.arange(5), "empty": torch.zeros(0)}
    blob = stream_bytes(state, zip64_threshold=300)
    path = tmp_path / "zip64.pt"
    path.write_bytes(blob)
    archive = zipfile.ZipFile(path)
    assert archive.testzip() is None   # every CRC
    infos = {i.filename: i for i in archive.infolist()}
    assert infos["archive/data/1"].file_size == 400 and infos["archive/data/3"].header_offset > 300
    for info in infos.values():
        central = struct.unpack_from("<2L", blob, _central_entry(blob, info) + 20)
        assert (central == (0xFFFFFFFF, 0xFFFFFFFF)) == (info.file_size >= 300)
    large = data_offsets(blob)["archive/data/1"]
    assert blob[large + 400:large + 404] == b"PK\x07\x08" and struct.unpack_from("<QQ", blob, large + 408) == (400, 400)
    assert struct.unpack_from("<2L", blob, len(blob) - 10) == (0xFFFFFFFF, 0xFFFFFFFF)   # end record: see zip64
    assert all(offset % 64 == 0 for offset in data_offsets(blob).values())
    for back in (torch.load(path, weights_only=True), torch.load(path, mmap=True, weights_only=True)):
        assert all(torch.equal(back[k], v) for k, v in state.items())
    assert verify_checkpoint(path) == len(state)   # every tensor record's CRC
    with open_checkpoint(path, check=True) as checkpoint:
        assert all(torch.equal(checkpoint[k], v) for k, v in state.items())


def _central_entry(blob: bytes, info: zipfile.ZipInfo) -> int:
    name = info.filename.encode()
    at = blob.index(b"PK\x01\x02", blob.rindex(b"PK\x03\x04"))
    while blob[at + 46:at + 46 + len(name)] != name:
        name_len, extra_len, comment_len = struct.unpack_from("<3H", blob, at + 28)
        at += 46 + name_len + extra_len + comment_len
    return at


def test_more_than_65535_records_use_the_zip64_count(tmp_path: Path) -> None:
    specs = [TensorSpec(f"t{i}", (0,), "float32") for i in range(65_540)]
    path = tmp_path / "many.pt"
    with open(path, "wb") as handle:
        write_torch_zip_stream(handle, specs, (b"" for _ in specs))
    blob = path.read_bytes()
    assert struct.unpack_from("<2H", blob, len(blob) - 14) == (0xFFFF, 0xFFFF)
    assert len(zipfile.ZipFile(path).infolist()) == 65_540 + 6
    with open_checkpoint(path) as checkpoint:
        assert len(checkpoint.specs) == 65_540 and checkpoint.specs["t65539"].shape == (0,)


class OneAtATime:
    """Chunks over fresh numpy arrays, asserting each earlier array is gone before the next is made."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.made: list[weakref.ref[np.ndarray]] = []

    def chunk(self, size: int) -> memoryview:
        assert all(ref() is None for ref in self.made), "an earlier tensor's bytes are still held"
        array = np.full(size, len(self.made) + 1, dtype=np.uint8)
        self.made.append(weakref.ref(array))
        return array.data

    def __iter__(self) -> Iterator[memoryview]:
        return (self.chunk(size) for size in self.sizes)


def test_the_stream_writer_holds_one_tensor_at_a_time() -> None:
    sizes = [16, 1000, 0, 64]
    chunks = OneAtATime(sizes)
    out = io.BytesIO()
    write_torch_zip_stream(out, [TensorSpec(f"t{i}", (n,), "uint8") for i, n in enumerate(sizes)], chunks)
    assert len(chunks.made) == 4 and all(ref() is None for ref in chunks.made)
    back = torch.load(io.BytesIO(out.getvalue()), weights_only=True)
    assert [int(t.sum()) for t in back.values()] == [16 * 1, 1000 * 2, 0, 64 * 4]


def test_write_streamed_to_pt_holds_one_tensor_at_a_time(tmp_path: Path) -> None:
    sizes = {"a": 8, "b": 4096, "c": 3}
    chunks = OneAtATime(list(sizes.values()))
    specs = [TensorSpec(name, (n,), "uint8") for name, n in sizes.items()]
    produce = {name: (lambda: pytest.fail("raw bytes were given")) for name in sizes}
    write_streamed(str(tmp_path / "out.pt"), specs, produce, raw=lambda name: chunks.chunk(sizes[name]))
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert {k: v.shape[0] for k, v in back.items()} == sizes


def test_file_spans_are_copied_with_their_crc_and_without_torch(tmp_path: Path) -> None:
    """safetensors -> .pt without a cast copies each tensor's bytes from the file (FileSpans): torch is never
    imported, and the CRC-32s are right."""
    from safetensors.torch import save_file

    state = {"w": torch.randn(4, 5), "b": torch.arange(3), "e": torch.zeros(0, 2)}
    save_file(state, tmp_path / "in.safetensors")
    script = (f"import sys; from ckptsurgeon.convert import convert_checkpoint; "
              f"convert_checkpoint({str(tmp_path / 'in.safetensors')!r}, {str(tmp_path / 'out.pt')!r}); "
              f"sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", script]).returncode == 0
    assert zipfile.ZipFile(tmp_path / "out.pt").testzip() is None
    assert verify_checkpoint(tmp_path / "out.pt") == 3
    back = torch.load(tmp_path / "out.pt", weights_only=True)
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], v) for k, v in state.items())
    convert_checkpoint(tmp_path / "out.pt", tmp_path / "again.pt")   # torch zip spans too
    assert all(torch.equal(torch.load(tmp_path / "again.pt", weights_only=True)[k], v) for k, v in state.items())


def test_a_span_shorter_than_its_file_says_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(b"x" * 10)
    with pytest.raises(OSError, match="ended 6 bytes early"):
        write_torch_zip_stream(io.BytesIO(), [TensorSpec("t", (16,), "uint8")],
                               [FileSpan(str(tmp_path / "short.bin"), 0, 16)])


@pytest.mark.parametrize(("specs", "chunks", "message"), [
    ([TensorSpec("w", (3,), "float32")], [b"\0" * 8], r"'w': got 8 bytes, expected 12"),
    ([TensorSpec("w", (1,), "uint8")] * 2, [b"\0", b"\0"], r"'w': two tensors of that name"),
    ([TensorSpec("w", (1,), "uint8")], [], r"'w': no bytes given"),
    ([TensorSpec("w", (1,), "uint8")], [b"\0", b"\0"], r"more chunks than the 1 tensors"),
    ([TensorSpec("q", (1,), "qint8")], [b"\0"], r"'q': dtype qint8 cannot be written to a torch zip"),
    ([TensorSpec("bad\udcff", (1,), "uint8")], [b"\0"], r"not valid UTF-8"),
])
def test_refusals_name_the_tensor(specs: list[TensorSpec], chunks: list[bytes], message: str) -> None:
    with pytest.raises(CheckpointFormatError, match=message):
        write_torch_zip_stream(io.BytesIO(), specs, chunks)


def test_quantized_tensors_still_go_to_torch_save(tmp_path: Path) -> None:
    quantized = torch.quantize_per_tensor(torch.tensor([0.5, 1.0, 2.0]), 0.5, 0, torch.qint8)
    out = write_state_dict(tmp_path / "q.pt", {"q": quantized, "w": torch.ones(2)})
    back = torch.load(out, weights_only=True)
    assert torch.equal(back["q"].dequantize(), quantized.dequantize()) and torch.equal(back["w"], torch.ones(2))


def test_archive_name_is_the_records_folder() -> None:
    blob = stream_bytes({"w": torch.ones(1)}, archive_name="model")
    assert zipfile.ZipFile(io.BytesIO(blob)).namelist()[0] == "model/data.pkl"
    assert torch.equal(torch.load(io.BytesIO(blob), weights_only=True)["w"], torch.ones(1))
    with pytest.raises(CheckpointFormatError, match="archive name"):
        stream_bytes({"w": torch.ones(1)}, archive_name="a/b")
