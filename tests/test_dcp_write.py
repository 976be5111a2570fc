"""DCP folders written by ``write_dcp_folder``: read back by torch.distributed.checkpoint itself, streamed one
tensor at a time, and atomic (``folders.atomic_folder``)."""

from __future__ import annotations

import gc
import io
import os
import pickle
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from ckptsurgeon.errors import CheckpointFormatError, OutputError
from ckptsurgeon.io import folders
from ckptsurgeon.io.dcp_writer import DATA_FILE, METADATA_FILE, write_dcp_folder
from ckptsurgeon.io.torchzip_writer import write_tensor_item
from ckptsurgeon.io.folders import atomic_folder, check_output_folder, remove_stale_folders
from ckptsurgeon.io.records import FileSpan
from ckptsurgeon.io.writer import tensor_bytes
from ckptsurgeon.specs import TensorSpec, spec_of

DEAD_PID = 999999


def every_dtype() -> dict[str, torch.Tensor]:
    """One tensor of each common dtype, with 0-dim, empty and non-contiguous ones among them."""
    gen = torch.Generator().manual_seed(0)
    floats = torch.randn(3, 5, generator=gen)
    return {
        "conv.weight": floats, "half": floats.half(), "bf16": floats.bfloat16(), "double": floats.double()[:, 1:4],
        "fc.weight.t": floats.t(), "int64": torch.arange(-5, 7), "int32": torch.arange(4, dtype=torch.int32),
        "int16": torch.tensor([-3, 9], dtype=torch.int16), "int8": torch.tensor([-128, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "complex": torch.complex(floats[0], floats[1]), "fp8": floats.to(torch.float8_e4m3fn),
        "bn.num_batches_tracked": torch.tensor(7), "scalar": torch.tensor(2.5, dtype=torch.float16),
        "empty": torch.zeros(0, 4), "empty.int": torch.zeros(2, 0, 3, dtype=torch.int64),
    }


def producers(tensors: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    return {name: returning(tensor) for name, tensor in tensors.items()}


def returning(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: tensor


def write(path: Path, tensors: dict[str, torch.Tensor], **options: Any) -> str:
    return write_dcp_folder(str(path), [spec_of(n, t) for n, t in tensors.items()], producers(tensors), **options)


def load_dcp(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    assert not torch.distributed.is_initialized()
    target = {name: torch.empty_like(tensor, memory_format=torch.contiguous_format) for name, tensor in like.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "no process group: loading in a single process"
        dcp_load(target, checkpoint_id=str(path))
    return target


def assert_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(bytes_of(got[name]), bytes_of(tensor)), name   # bitwise: NaN, -0.0, fp8 alike


def bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def siblings(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path.parent) if n != path.name)


def test_torch_dcp_load_reads_every_dtype_shape_and_value(tmp_path: Path) -> None:
    tensors = every_dtype()
    out = tmp_path / "ckpt"
    assert write(out, tensors) == str(out)
    assert sorted(os.listdir(out)) == [METADATA_FILE, DATA_FILE]
    assert_equal(load_dcp(out, tensors), tensors)
    assert siblings(out) == []


def test_dcp_to_torch_save_converts_it(tmp_path: Path) -> None:
    tensors = every_dtype()
    write(tmp_path / "ckpt", tensors)
    dcp_to_torch_save(str(tmp_path / "ckpt"), str(tmp_path / "model.pt"))
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert_equal({name: loaded[name] for name in tensors}, tensors)


def test_metadata_is_what_torch_writes(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "s": torch.tensor(3), "e": torch.zeros(0, 4)}
    write(tmp_path / "ours", tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_save(tensors, checkpoint_id=str(tmp_path / "torch"))
    ours, theirs = (pickle.loads((tmp_path / name / METADATA_FILE).read_bytes()) for name in ("ours", "torch"))
    assert ours.state_dict_metadata == theirs.state_dict_metadata
    assert ours.planner_data == theirs.planner_data and ours.version == theirs.version
    assert ours.storage_data == theirs.storage_data   # same items at the same offsets and lengths
    assert [i.index for i in ours.storage_data] == [0, 0, 0]


def test_each_item_is_byte_for_byte_torch_save_but_for_the_serialization_id() -> None:
    tensor = torch.arange(6.0).reshape(2, 3)
    theirs, ours = io.BytesIO(), io.BytesIO()
    torch.save(tensor, theirs)
    length = write_tensor_item(ours, spec_of("a", tensor), tensor_bytes(tensor))
    a, b = theirs.getvalue(), ours.getvalue()
    assert length == len(b) == len(a)
    start = a.index(b"archive/.data/serialization_id")
    differing = [i for i in range(len(a)) if a[i] != b[i]]
    assert differing and all(i > start for i in differing)


def test_raw_bytes_and_file_spans_are_used_before_produce(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(4, 4), "b": torch.arange(4, dtype=torch.int32)}
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"xx" + tensors["w"].numpy().tobytes())

    def raw(name: str) -> memoryview | FileSpan | None:
        return FileSpan(str(blob), 2, 64) if name == "w" else None

    def never() -> torch.Tensor:
        raise AssertionError("w comes from raw")

    out = tmp_path / "ckpt"
    write_dcp_folder(str(out), [spec_of(n, t) for n, t in tensors.items()], {"w": never, "b": lambda: tensors["b"]},
                     raw=raw)
    assert_equal(load_dcp(out, tensors), tensors)


def test_one_tensor_in_memory_at_a_time(tmp_path: Path) -> None:
    names = [f"layer{i}.weight" for i in range(5)]
    previous: list[weakref.ref[torch.Tensor]] = []

    def make(index: int) -> Callable[[], torch.Tensor]:
        def produce() -> torch.Tensor:
            gc.collect()
            assert all(ref() is None for ref in previous), "an earlier tensor is still alive"
            tensor = torch.full((64, 64), float(index))
            previous.append(weakref.ref(tensor))
            return tensor
        return produce

    specs = [TensorSpec(name, (64, 64), "float32") for name in names]
    write_dcp_folder(str(tmp_path / "ckpt"), specs, {name: make(i) for i, name in enumerate(names)})
    expected = {name: torch.full((64, 64), float(i)) for i, name in enumerate(names)}
    assert_equal(load_dcp(tmp_path / "ckpt", expected), expected)


def test_a_failure_midway_leaves_no_folder_and_no_temporary(tmp_path: Path) -> None:
    def broken() -> torch.Tensor:
        raise RuntimeError("source went away")

    specs = [TensorSpec("a", (2,), "float32"), TensorSpec("b", (2,), "float32")]
    with pytest.raises(RuntimeError, match="source went away"):
        write_dcp_folder(str(tmp_path / "ckpt"), specs, {"a": lambda: torch.zeros(2), "b": broken})
    assert os.listdir(tmp_path) == []


def test_a_failure_while_replacing_keeps_the_old_folder(tmp_path: Path) -> None:
    old = {"a": torch.ones(3)}
    write(tmp_path / "ckpt", old)
    with pytest.raises(CheckpointFormatError, match="'a': produced float64 \\[3\\], expected float32 \\[3\\]"):
        write_dcp_folder(str(tmp_path / "ckpt"), [TensorSpec("a", (3,), "float32")],
                         {"a": lambda: torch.zeros(3, dtype=torch.float64)}, force=True)
    assert_equal(load_dcp(tmp_path / "ckpt", old), old)
    assert siblings(tmp_path / "ckpt") == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_force_replaces_the_folder_and_leaves_no_aside_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(folders, "_exchanger", lambda: None)
    out = tmp_path / "ckpt"
    write(out, {"old.only": torch.ones(2)})
    (out / "stray.txt").write_text("from the old folder")
    new = {"a": torch.arange(5), "b": torch.zeros(2, 2)}
    with pytest.raises(OutputError, match=f"{out}: already exists and is not empty; pass --force"):
        write(out, new)
    write(out, new, force=True)
    assert sorted(os.listdir(out)) == [METADATA_FILE, DATA_FILE]
    assert_equal(load_dcp(out, new), new)
    assert siblings(out) == []


def test_an_empty_existing_folder_is_filled_without_force(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    write(tmp_path / "ckpt", {"a": torch.ones(1)})
    assert sorted(os.listdir(tmp_path / "ckpt")) == [METADATA_FILE, DATA_FILE]


def test_a_killed_writer_s_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    stale = tmp_path / f".ckpt.ckptsurgeon-tmp-{DEAD_PID}-0123456789ab"
    stale.mkdir()
    (stale / DATA_FILE).write_bytes(b"half written")
    mine = tmp_path / f".ckpt.ckptsurgeon-tmp-{os.getpid()}-0123456789ab"   # a live writer's: left alone
    mine.mkdir()
    write(tmp_path / "other", {"a": torch.ones(1)})
    assert sorted(os.listdir(tmp_path)) == [mine.name, "other"]


def test_a_kill_between_the_two_renames_restores_the_old_folder(tmp_path: Path) -> None:
    old = {"a": torch.ones(3)}
    write(tmp_path / "old", old)
    aside = tmp_path / f".ckpt.ckptsurgeon-old-{DEAD_PID}-0123456789ab"
    os.rename(tmp_path / "old", aside)   # moved aside, the new one never renamed in
    assert remove_stale_folders(str(tmp_path)) == [aside.name]
    assert_equal(load_dcp(tmp_path / "ckpt", old), old)
    # An aside copy whose folder was replaced is deleted.
    aside.mkdir()
    assert remove_stale_folders(str(tmp_path)) == [aside.name]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_output_inside_an_input_folder_or_equal_to_an_input_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source_dcp"
    write(source, {"a": torch.ones(1)})
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"")
    with pytest.raises(OutputError, match="inside the input folder"):
        check_output_folder(source / "converted", inputs=[source])
    with pytest.raises(OutputError, match="the output is also an input"):
        check_output_folder(weights, inputs=[weights], force=True)
    with pytest.raises(OutputError, match="the output is also an input"):
        check_output_folder(source, inputs=[str(source)], force=True)
    with pytest.raises(OutputError, match="holds the input"):
        check_output_folder(tmp_path, inputs=[weights], force=True)
    assert check_output_folder(tmp_path / "fresh", inputs=[source, weights]) == str(tmp_path / "fresh")


def test_output_that_is_a_file_or_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        write(tmp_path / "model.pt", {"a": torch.ones(1)}, force=True)
    assert (tmp_path / "model.pt").read_bytes() == b"keep me"
    with pytest.raises(OutputError, match="does not exist"):
        write(tmp_path / "missing" / "ckpt", {"a": torch.ones(1)})


def test_atomic_folder_yields_a_recognisable_sibling(tmp_path: Path) -> None:
    with atomic_folder(str(tmp_path / "out"), force=False) as temp:
        assert os.path.dirname(temp) == str(tmp_path)
        assert os.path.basename(temp).startswith(f".out.ckptsurgeon-tmp-{os.getpid()}-")
        Path(temp, "file.txt").write_text("x")
        assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "file.txt").read_text() == "x"
