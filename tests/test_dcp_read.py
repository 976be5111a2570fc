"""torch.distributed.checkpoint folders: specs from ``.metadata`` alone, tensors assembled from their chunks,
the CLI over them, and hostile or damaged folders. Every folder is written by torch's own ``dcp.save`` in this
process, without a process group."""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

import ckptsurgeon.cli
import ckptsurgeon.io.dcp
from ckptsurgeon.cli import cli
from ckptsurgeon.errors import CheckpointFormatError
from ckptsurgeon.io import open_checkpoint
from ckptsurgeon.io.dcp_metadata import read_layout
from ckptsurgeon.io.shards import checkpoint_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")   # dcp.save: "assuming a single process"


class Tiny(nn.Module):
    """A conv, a batch norm (an int64 buffer) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)


def _training_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = Tiny()
    optim = torch.optim.Adam(model.parameters())
    model.fc(model.bn(model.conv(torch.randn(2, 3, 5, 5))).mean((2, 3))).sum().backward()
    optim.step()
    return {"model": model.state_dict(), "optim": optim.state_dict(), "extra": {"epoch": 3, "tag": "run-1"}}


def _save(state: dict[str, Any], folder: Path, **writer: Any) -> Path:
    storage = dcp.FileSystemWriter(str(folder), **writer) if writer else None
    dcp.save(state, checkpoint_id=str(folder), storage_writer=storage)
    assert not torch.distributed.is_initialized()
    return folder


class ChunkedPlanner(DefaultSavePlanner):
    """Saves each tensor named in ``split`` as four chunks (a 2x2 grid), as sharded ranks would."""

    def __init__(self, split: set[str]) -> None:
        super().__init__()
        self.split = split

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        items: list[WriteItem] = []
        for item in plan.items:
            if item.index.fqn not in self.split or item.tensor_data is None:
                items.append(item)
                continue
            rows, cols = item.tensor_data.size[0], item.tensor_data.size[1]
            for top, height in ((0, rows // 2), (rows // 2, rows - rows // 2)):
                for left, width in ((0, cols // 3), (cols // 3, cols - cols // 3)):
                    chunk = ChunkStorageMetadata(torch.Size([top, left]), torch.Size([height, width]))
                    items.append(WriteItem(MetadataIndex(item.index.fqn, chunk.offsets), WriteItemType.SHARD,
                                           tensor_data=TensorWriteData(chunk, item.tensor_data.properties,
                                                                       item.tensor_data.size)))
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> Any:
        if write_item.index.fqn not in self.split:
            return super().resolve_data(write_item)
        assert write_item.tensor_data is not None
        chunk = write_item.tensor_data.chunk
        whole = self.state_dict[write_item.index.fqn]
        return whole.narrow(0, chunk.offsets[0], chunk.sizes[0]).narrow(1, chunk.offsets[1], chunk.sizes[1]).clone()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(_training_state(), tmp_path_factory.mktemp("dcp") / "ckpt")


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = {"big": torch.randn(7, 10), "half": torch.randn(6, 4).to(torch.bfloat16), "bias": torch.randn(3)}
    folder = tmp_path_factory.mktemp("dcp") / "chunked"
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder), thread_count=4),
             planner=ChunkedPlanner({"big", "half"}))
    return folder, state


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    ckptsurgeon.cli._register()
    return CliRunner()


def _reference(folder: Path, tmp_path: Path) -> dict[str, Any]:
    dcp_to_torch_save(str(folder), str(tmp_path / "ref.pt"))
    loaded: dict[str, Any] = torch.load(tmp_path / "ref.pt", weights_only=False)
    return loaded


def test_specs_and_values_match_dcp_to_torch_save(folder: Path, tmp_path: Path) -> None:
    reference = _reference(folder, tmp_path)["model"]
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.info.format == "dcp"
        assert checkpoint.info.container == "model"
        assert list(checkpoint) == list(reference)
        for name, tensor in reference.items():
            assert checkpoint.specs[name].shape == tuple(tensor.shape)
            assert checkpoint.specs[name].dtype == str(tensor.dtype).removeprefix("torch.")
            assert torch.equal(checkpoint[name], tensor)


def test_containers_list_optimizer_state_and_bytes_items(folder: Path) -> None:
    with open_checkpoint(folder) as checkpoint:
        kinds = {c.path: c.kind for c in checkpoint.info.containers}
    assert kinds["model"] == "state_dict" and kinds["optim.state.0"] == "state_dict"
    assert kinds["extra.epoch"] == kinds["extra.tag"] == kinds["optim.param_groups.0.lr"] == "bytes"
    with open_checkpoint(folder, container="optim.state.0") as optim:
        assert set(optim) == {"step", "exp_avg", "exp_avg_sq"}


def test_chunks_across_files_are_assembled(chunked: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    folder, state = chunked
    files = {name for name in os.listdir(folder) if name.endswith(".distcp")}
    assert len(files) > 1
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.info.container == ""
        layout = read_layout(str(folder))
        assert len(layout.tensors["big"].chunks) == 4
        assert len({chunk.storage.file for chunk in layout.tensors["big"].chunks}) > 1
        for name, tensor in state.items():
            assert checkpoint[name].dtype == tensor.dtype
            assert torch.equal(checkpoint[name], tensor)
    reference = _reference(folder, tmp_path)
    assert all(torch.equal(reference[name], state[name]) for name in state)


def test_specs_and_inspect_read_no_tensor_data(folder: Path, runner: CliRunner,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("tensor data read")

    monkeypatch.setattr(ckptsurgeon.io.dcp, "read_chunk", refuse)
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.specs["conv.weight"].shape == (4, 3, 3, 3)
    result = runner.invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "conv.weight" in result.output and "bn.num_batches_tracked" in result.output


def test_checkpoint_files_cover_metadata_and_storage(chunked: tuple[Path, dict[str, torch.Tensor]]) -> None:
    folder, _ = chunked
    names = sorted(os.path.basename(path) for path in checkpoint_files(folder))
    assert names == sorted([".metadata"] + [n for n in os.listdir(folder) if n.endswith(".distcp")])


def test_cli_inspect_containers_convert_diff_transfer(folder: Path, runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(folder), "--containers"])
    assert result.exit_code == 0, result.output
    assert "extra.epoch" in result.output and "bytes" in result.output and "<- used" in result.output

    out = tmp_path / "out.safetensors"
    result = runner.invoke(cli, ["convert", str(folder), str(out)])
    assert result.exit_code == 0, result.output
    reference = _training_state()["model"]
    written = load_file(out)
    assert set(written) == set(reference) and all(torch.equal(written[k], reference[k]) for k in reference)

    result = runner.invoke(cli, ["diff", str(folder), str(out), "--values"])
    assert result.exit_code == 0, result.output

    template = tmp_path / "template.pt"
    torch.save(Tiny().state_dict(), template)
    moved = tmp_path / "moved.safetensors"
    result = runner.invoke(cli, ["transfer", str(folder), "--target", str(template), "-o", str(moved)])
    assert result.exit_code == 0, result.output
    assert torch.equal(load_file(moved)["fc.weight"], reference["fc.weight"])


def test_output_may_not_overwrite_a_storage_file(folder: Path, runner: CliRunner) -> None:
    target = folder / "__0_0.distcp"
    before = target.read_bytes()
    result = runner.invoke(cli, ["convert", str(folder), str(target), "--force"])
    assert result.exit_code == 2, result.output
    assert target.read_bytes() == before


class _System:
    """Pickles as ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def test_malicious_metadata_is_refused_and_runs_nothing(tmp_path: Path, runner: CliRunner) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps({"x": _System(f"touch {marker}")}))
    with pytest.raises(CheckpointFormatError, match=r"refers to the global (posix|os)\.system.*refused"):
        open_checkpoint(folder)
    result = runner.invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "system" in result.output
    assert not marker.exists()


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(folder):
        (copy / name).write_bytes((folder / name).read_bytes())
    return copy


def test_truncated_storage_file_is_one_line_exit_2(folder: Path, tmp_path: Path, runner: CliRunner) -> None:
    copy = _copy(folder, tmp_path)
    data = (copy / "__0_0.distcp").read_bytes()
    (copy / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    for command in (["inspect", str(copy)], ["convert", str(copy), str(tmp_path / "o.safetensors")]):
        result = runner.invoke(cli, command)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "__0_0.distcp" in lines[0] and "truncated" in lines[0]
    assert not (tmp_path / "o.safetensors").exists()


def test_damaged_chunk_bytes_are_one_line_exit_2(folder: Path, tmp_path: Path, runner: CliRunner) -> None:
    copy = _copy(folder, tmp_path)
    path = copy / "__0_0.distcp"
    path.write_bytes(b"\0" * path.stat().st_size)   # right length, no torch zip inside
    assert runner.invoke(cli, ["inspect", str(copy)]).exit_code == 0
    result = runner.invoke(cli, ["convert", str(copy), str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "not a torch-saved tensor" in result.output


def test_missing_storage_file_is_named(chunked: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    copy = _copy(chunked[0], tmp_path)
    gone = sorted(n for n in os.listdir(copy) if n.endswith(".distcp"))[-1]
    (copy / gone).unlink()
    with pytest.raises(CheckpointFormatError, match=rf"{gone}: storage file missing"):
        open_checkpoint(copy)


def test_safetensors_serialization_format(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.filesystem import SerializationFormat

    state = {"model": {"w": torch.randn(3, 4), "h": torch.randn(5).to(torch.bfloat16), "n": torch.tensor(7)}}
    folder = tmp_path / "st"
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder), thread_count=2,
                                                        serialization_format=SerializationFormat.SAFETENSORS))
    with open_checkpoint(folder) as checkpoint:
        assert checkpoint.info.container == "model"
        assert all(torch.equal(checkpoint[name], tensor) for name, tensor in state["model"].items())


def test_dtensor_shards_saved_by_two_gloo_ranks(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from dcp_ranks import full_tensor

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path / "ranks"
    script = Path(__file__).with_name("dcp_ranks.py")
    done = subprocess.run([sys.executable, str(script), str(folder), str(port)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    layout = read_layout(str(folder))
    assert [chunk.offsets for chunk in layout.tensors["model.w"].chunks] == [(0, 0), (5, 0)]
    assert {chunk.storage.file for chunk in layout.tensors["model.w"].chunks} == {"__0_0.distcp", "__1_0.distcp"}
    with open_checkpoint(folder) as checkpoint:
        assert torch.equal(checkpoint["w"], full_tensor())
        assert torch.equal(checkpoint["b"], torch.arange(3.0))


def test_reading_needs_no_torch_distributed_checkpoint(chunked: tuple[Path, dict[str, torch.Tensor]]) -> None:
    import subprocess
    import sys

    # ``import torch`` loads torch.distributed itself; DCP's own modules are never imported, nor a group made.
    code = ("import sys, torch; from ckptsurgeon.io import open_checkpoint; c = open_checkpoint(sys.argv[1]); "
            "c['big']; print(sorted(m for m in sys.modules if m.startswith('torch.distributed.checkpoint')), "
            "torch.distributed.is_initialized())")
    done = subprocess.run([sys.executable, "-c", code, str(chunked[0])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[] False"


def test_metadata_whose_chunks_do_not_fit_is_refused(folder: Path, tmp_path: Path) -> None:
    copy = _copy(folder, tmp_path)
    with open(copy / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)   # our own test file: torch's classes, trusted here
    entry = metadata.state_dict_metadata["model.fc.weight"]
    entry.size = torch.Size([50, 4])   # one 5x4 chunk for a 50x4 tensor: a rank's chunks missing
    (copy / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointFormatError, match=r"chunks of 'model.fc.weight' do not cover its size"):
        open_checkpoint(copy)
    entry.size = torch.Size([5000, 4])
    entry.chunks[0].sizes = torch.Size([5000, 4])   # covered, but its storage is far too small for it
    (copy / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointFormatError, match=r"is float32 \[5000, 4\] but its storage holds \d+ bytes"):
        open_checkpoint(copy)
