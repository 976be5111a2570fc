"""file -> DCP folder -> sharded safetensors -> file keeps every tensor's name, dtype, shape and bytes."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.io import open_checkpoint

_register()


def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(300, 64, generator=generator),
        "layers.0.attn.qkv.weight": torch.randn(192, 64, generator=generator).to(torch.bfloat16),
        "layers.0.norm.weight": torch.randn(64, generator=generator).half(),
        "layers.0.norm.num_batches_tracked": torch.tensor(7),
        "layers.1.mask": torch.rand(8, 8, generator=generator) > 0.5,
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "ids": torch.arange(40, dtype=torch.int32).reshape(4, 10),
    }


def test_file_to_dcp_to_sharded_safetensors_to_file(tmp_path: Path) -> None:
    original = state()
    source = tmp_path / "model.pt"
    torch.save(original, source)
    runner = CliRunner()
    steps = [(source, tmp_path / "dcp", "dcp"), (tmp_path / "dcp", tmp_path / "sharded", "safetensors-sharded"),
             (tmp_path / "sharded", tmp_path / "back.pt", "pt")]
    for into, out, fmt in steps:
        args = ["convert", str(into), str(out), "--format", fmt]
        if fmt == "safetensors-sharded":
            args += ["--max-shard-size", "20KB"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (fmt, result.output)
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) >= 3
    with open_checkpoint(tmp_path / "back.pt") as back:
        assert sorted(back) == sorted(original)   # the hub's splitting gives an oversized tensor its own shard
        for name, tensor in original.items():
            value = back[name]
            assert (value.dtype, tuple(value.shape)) == (tensor.dtype, tuple(tensor.shape)), name
            assert value.reshape(-1).view(torch.uint8).tolist() == tensor.reshape(-1).view(torch.uint8).tolist(), name
    loaded = torch.load(tmp_path / "back.pt", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in original.items())
