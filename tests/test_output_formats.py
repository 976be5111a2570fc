"""--format and --max-shard-size on every command that writes: sharded safetensors and DCP folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.errors import OutputError
from ckptsurgeon.io import open_checkpoint
from ckptsurgeon.io.sharded_writer import INDEX_NAME
from ckptsurgeon.io.writer import check_output, output_format, write_state_dict


_register()


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)])


def conv_bn_state() -> dict[str, torch.Tensor]:
    """A conv (2.4 MB, over a 1MB shard), its BatchNorm, and a 1.2 MB head: three shards at --max-shard-size 1MB."""
    generator = torch.Generator().manual_seed(0)
    return {"backbone.0.weight": torch.randn(256, 256, 3, 3, generator=generator),
            "backbone.1.weight": torch.rand(256, generator=generator) + 0.5,
            "backbone.1.bias": torch.randn(256, generator=generator),
            "backbone.1.running_mean": torch.randn(256, generator=generator),
            "backbone.1.running_var": torch.rand(256, generator=generator) + 0.5,
            "backbone.1.num_batches_tracked": torch.tensor(3),
            "head.weight": torch.randn(300, 1000, generator=generator),
            "head.bias": torch.zeros(300)}


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.safetensors"
    save_file(conv_bn_state(), str(path))
    return path


def commands(source: Path, out: Path, tmp_path: Path) -> dict[str, list[object]]:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["backbone.0", "backbone.1"]]))
    return {"transfer": ["transfer", source, "--target", source, "-o", out],
            "convert": ["convert", source, out],
            "rename": ["rename", source, out, "--rule", "^backbone=trunk"],
            "drop": ["drop", source, out, "--pattern", "head.bias"],
            "extract": ["extract", source, out, "--prefix", "backbone"],
            "cast": ["cast", source, out, "--dtype", "fp16"],
            "strip": ["strip", source, out],
            "merge": ["merge", source, source, out],
            "average": ["average", source, source, "-o", out],
            "fuse-bn": ["fuse-bn", source, out, "--pairs", pairs]}


@pytest.mark.parametrize("command", ["transfer", "convert", "rename", "drop", "extract", "cast", "strip", "merge",
                                     "average", "fuse-bn"])
def test_every_command_writes_a_sharded_folder(tmp_path: Path, source: Path, command: str) -> None:
    out = tmp_path / "out"
    result = run(*commands(source, out, tmp_path)[command], "--format", "safetensors-sharded",
                 "--max-shard-size", "1MB")
    assert result.exit_code == 0, result.output
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert sorted(os.listdir(out)) == sorted([INDEX_NAME, *shards]) and len(shards) >= 2
    assert all(os.path.getsize(out / shard) < 1_000_000 or
               len([k for k, v in index["weight_map"].items() if v == shard]) == 1 for shard in shards)
    with open_checkpoint(out) as checkpoint:
        assert set(checkpoint) == set(index["weight_map"])
        assert index["metadata"]["total_size"] == sum(spec.nbytes for spec in checkpoint.specs.values())
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]   # no temporaries left


def test_dcp_output_loads_with_torch_distributed_checkpoint(tmp_path: Path, source: Path) -> None:
    import torch.distributed.checkpoint as dcp

    out = tmp_path / "out.dcp"
    result = run("cast", source, out, "--dtype", "fp64", "--format", "dcp")
    assert result.exit_code == 0, result.output
    expected = {name: tensor.double() if tensor.is_floating_point() else tensor
                for name, tensor in conv_bn_state().items()}
    loaded = {name: torch.empty_like(tensor) for name, tensor in expected.items()}
    dcp.load(loaded, checkpoint_id=str(out))
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_file_format_given_explicitly_takes_any_extension(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "weights.ckptfile"
    assert run("convert", source, out, "--format", "pt").exit_code == 0
    assert set(torch.load(out, weights_only=True)) == set(conv_bn_state())


@pytest.mark.parametrize("where", ["equal", "holds"])
def test_an_out_folder_that_is_or_holds_an_input_is_refused(tmp_path: Path, where: str) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sharded = inputs / "sharded"
    write_state_dict(sharded, conv_bn_state(), format="safetensors-sharded", max_shard_size="1MB")
    out = sharded if where == "equal" else inputs
    for args in (["convert", sharded, out], ["cast", sharded, out, "--dtype", "fp16"],
                 ["transfer", sharded, "--target", sharded, "-o", out]):
        result = run(*args, "--format", "safetensors-sharded", "--force")
        assert result.exit_code == 2, result.output
        assert "input" in result.output
    assert len(os.listdir(sharded)) == 4   # untouched


def test_a_folder_without_a_format_is_refused_before_any_work(tmp_path: Path, source: Path) -> None:
    result = run("convert", source, tmp_path / "out")
    assert result.exit_code == 2
    assert "--format safetensors-sharded" in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(OutputError, match="needs a format"):
        output_format(str(tmp_path))
    assert output_format("a.safetensors") == "safetensors" and output_format("a.pth") == "pt"
    assert check_output(tmp_path / "new", format="dcp") == str(tmp_path / "new")


def test_a_bad_shard_size_is_a_usage_error(tmp_path: Path, source: Path) -> None:
    result = run("convert", source, tmp_path / "out", "--format", "safetensors-sharded", "--max-shard-size", "lots")
    assert result.exit_code == 2
    assert "is not a size" in result.output
