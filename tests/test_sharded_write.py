"""Sharded safetensors output: the hub's splitting and naming, the index, and loading it back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ckptsurgeon.errors import OutputError
from ckptsurgeon.io import open_checkpoint
from ckptsurgeon.io.sharded_writer import (INDEX_NAME, parse_size, plan_shards, shard_names,
                                           write_sharded_safetensors)
from ckptsurgeon.io.writer import write_state_dict
from ckptsurgeon.specs import TensorSpec


def spec(name: str, nbytes: int) -> TensorSpec:
    return TensorSpec(name, (nbytes,), "uint8")


def mixed_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(64, 32, generator=generator),                 # 8192 bytes
            "layer.0.weight": torch.randn(32, 32, generator=generator).half(),        # 2048
            "layer.0.bias": torch.randn(32, generator=generator).to(torch.bfloat16),  # 64
            "bn.num_batches_tracked": torch.tensor(7),                                # 8
            "mask": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 4),
            "head.weight": torch.randn(16, 32, generator=generator, dtype=torch.float64)}  # 4096


def test_sizes_parse_in_the_hubs_units() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5kb") == 1500
    assert parse_size("1234") == 1234 and parse_size(99) == 99
    with pytest.raises(OutputError, match="not a size"):
        parse_size("5 parsecs")
    with pytest.raises(OutputError, match="more than 0"):
        parse_size("0MB")


def test_shards_split_as_the_hub_does() -> None:
    specs = [spec("a", 40), spec("b", 50), spec("big", 300), spec("c", 20), spec("d", 100)]
    shards = plan_shards(specs, 100)
    # The tensor over the limit gets a shard of its own, listed before the one still being filled (a+b);
    # c would take that over the limit, so it starts another, and so does d.
    assert [[s.name for s in shard] for shard in shards] == [["big"], ["a", "b"], ["c"], ["d"]]
    assert shard_names(4) == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    assert shard_names(1) == ["model.safetensors"]
    assert plan_shards([], 100) == [[]]


def test_index_shards_and_round_trip(tmp_path: Path) -> None:
    state = mixed_state()
    source = tmp_path / "source.safetensors"
    save_file(state, str(source))
    folder = tmp_path / "sharded"
    with open_checkpoint(source) as checkpoint:
        specs = list(checkpoint.specs.values())
        produce = {name: (lambda n=name: checkpoint[n]) for name in checkpoint}
        write_sharded_safetensors(folder, specs, produce, raw=checkpoint.raw_span, max_shard_size="4kB",
                                  metadata={"note": "x"})
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(os.listdir(folder)) == sorted([INDEX_NAME, *shards])
    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["metadata"] == {"total_size": sum(t.numel() * t.element_size() for t in state.values())}
    assert set(index["weight_map"]) == set(state)
    alone = index["weight_map"]["embed.weight"]   # over the limit: a shard of its own
    assert [key for key, shard in index["weight_map"].items() if shard == alone] == ["embed.weight"]
    for shard in shards:
        with safe_open(str(folder / shard), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt", "note": "x"}
            for key in handle.keys():
                assert index["weight_map"][key] == shard
                assert torch.equal(handle.get_tensor(key), state[key])
    # our reader on the folder, then folder -> file keeps every name, dtype, shape and byte
    back = tmp_path / "back.safetensors"
    with open_checkpoint(folder) as checkpoint:
        write_state_dict(back, {name: checkpoint[name] for name in checkpoint})
    with open_checkpoint(back) as checkpoint:
        assert set(checkpoint) == set(state)
        for name, tensor in state.items():
            got = checkpoint[name]
            assert (got.dtype, got.shape) == (tensor.dtype, tensor.shape)
            assert got.contiguous().view(-1).view(torch.uint8).tolist() == \
                tensor.contiguous().view(-1).view(torch.uint8).tolist()


def test_one_shard_is_a_lone_model_safetensors(tmp_path: Path) -> None:
    state = mixed_state()
    write_state_dict(tmp_path / "out", state, format="safetensors-sharded")
    assert os.listdir(tmp_path / "out") == ["model.safetensors"]
    with open_checkpoint(tmp_path / "out") as checkpoint:
        assert set(checkpoint) == set(state)


def test_an_existing_folder_is_replaced_only_with_force(tmp_path: Path) -> None:
    state = {"w": torch.ones(300)}
    out = tmp_path / "out"
    write_state_dict(out, state, format="safetensors-sharded", max_shard_size=500)
    with pytest.raises(OutputError, match="already exists"):
        write_state_dict(out, state, format="safetensors-sharded", max_shard_size=500)
    write_state_dict(out, {"v": torch.zeros(2)}, format="safetensors-sharded", force=True)
    assert os.listdir(out) == ["model.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if n != "out"]   # no temporary left beside it


def test_a_failed_write_leaves_no_folder(tmp_path: Path) -> None:
    def broken() -> torch.Tensor:
        raise RuntimeError("boom")

    specs = [TensorSpec("a", (100,), "float32"), TensorSpec("b", (100,), "float32")]
    produce = {"a": lambda: torch.zeros(100), "b": broken}
    with pytest.raises(RuntimeError, match="boom"):
        write_sharded_safetensors(tmp_path / "out", specs, produce, max_shard_size=400)
    assert os.listdir(tmp_path) == []
