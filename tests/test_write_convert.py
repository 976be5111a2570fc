"""convert and the atomic writer: values, dtypes, key order, and nothing lost or left behind."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
from ckptsurgeon.cli import cli
from ckptsurgeon.convert import convert_checkpoint
from ckptsurgeon.errors import CheckpointFormatError, OutputError
from ckptsurgeon.io import open_checkpoint
from ckptsurgeon.io.writer import write_state_dict


class YoloLike(nn.Module):
    """A YOLOv7-shaped fragment: Conv(conv, bn, act) blocks in a Sequential, a 1x1 head with bias, anchors."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.SiLU()),
            nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8), nn.SiLU()),
            nn.Conv2d(8, 3 * 7, 1),
        )
        self.register_buffer("anchors", torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]))
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(1234)


@pytest.fixture
def yolo_pt(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """``{'model': fp16 whole model, 'optimizer': real SGD state, ...}`` as YOLOv7's train.py saves it."""
    torch.manual_seed(0)
    model = YoloLike()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    half = copy.deepcopy(model).half()
    path = tmp_path / "best.pt"
    torch.save({"epoch": 9, "best_fitness": 0.5, "training_results": None, "model": half, "ema": None,
                "updates": 10, "optimizer": optimizer.state_dict(), "wandb_id": None}, path)
    return path, half.state_dict()


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".ckptsurgeon-") or name.endswith(".tmp"))


def test_convert_fp16_whole_model_to_fp32_safetensors(yolo_pt: tuple, tmp_path: Path) -> None:
    source, half_sd = yolo_pt
    out = tmp_path / "weights.safetensors"
    result = CliRunner().invoke(cli, ["convert", str(source), str(out), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: {len(half_sd)} tensors from container 'model', ")
    loaded = load_file(out)  # the reference reader agrees with ours
    with open_checkpoint(out) as checkpoint:
        assert list(checkpoint) == list(half_sd)  # file order = the model's order
        for name, value in half_sd.items():
            expected = value.float() if value.is_floating_point() else value
            assert checkpoint[name].dtype == expected.dtype, name
            assert torch.equal(checkpoint[name], expected), name
            assert torch.equal(loaded[name], expected), name
        assert checkpoint.specs["model.0.1.num_batches_tracked"].dtype == "int64"
        assert int(checkpoint["model.0.1.num_batches_tracked"]) == 1235  # 1234 and one training step
        assert not any("momentum" in name or name.startswith("optimizer") for name in checkpoint)
    assert leftovers(tmp_path) == []


def test_convert_to_bf16(yolo_pt: tuple, tmp_path: Path) -> None:
    source, half_sd = yolo_pt
    out = tmp_path / "weights.safetensors"
    result = convert_checkpoint(source, out, dtype="bf16")
    assert (result.tensors, result.cast) == (len(half_sd), len(half_sd) - 2)  # two num_batches_tracked stay int64
    with open_checkpoint(out) as checkpoint:
        for name, value in half_sd.items():
            expected = value.to(torch.bfloat16) if value.is_floating_point() else value
            assert torch.equal(checkpoint[name], expected), name


def test_convert_to_pt_keeps_dtypes(yolo_pt: tuple, tmp_path: Path) -> None:
    source, half_sd = yolo_pt
    out = tmp_path / "weights.pt"
    result = CliRunner().invoke(cli, ["convert", str(source), str(out)])
    assert result.exit_code == 0, result.output
    plain = torch.load(out, weights_only=True)  # a plain state dict that torch reads without --trust
    assert list(plain) == list(half_sd)
    assert all(plain[name].dtype == value.dtype and torch.equal(plain[name], value) for name, value in half_sd.items())


def test_existing_output_refused_then_forced(yolo_pt: tuple, tmp_path: Path) -> None:
    source, half_sd = yolo_pt
    out = tmp_path / "weights.safetensors"
    out.write_bytes(b"keep me")
    refused = CliRunner().invoke(cli, ["convert", str(source), str(out)])
    assert refused.exit_code == 2
    assert refused.stderr == f"error: {out}: already exists; pass --force (force=True) to replace it\n"
    assert out.read_bytes() == b"keep me"
    forced = CliRunner().invoke(cli, ["convert", str(source), str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    with open_checkpoint(out) as checkpoint:
        assert list(checkpoint) == list(half_sd)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("spelling", ["same", "relative", "link"])
def test_output_equal_to_source_refused(yolo_pt: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        spelling: str) -> None:
    source, _ = yolo_pt
    before = source.read_bytes()
    monkeypatch.chdir(tmp_path)
    out = {"same": str(source), "relative": "best.pt", "link": str(tmp_path / "alias.pt")}[spelling]
    if spelling == "link":
        os.link(source, out)
    result = CliRunner().invoke(cli, ["convert", str(source), out, "--force"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {out}: the output is also an input; write to another file\n"
    assert source.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    """A tensor safetensors cannot store fails the write: no OUT, no temporary file, the old OUT intact."""
    source = tmp_path / "complex.pt"
    torch.save({"w": torch.ones(2), "z": torch.ones(2, dtype=torch.complex128)}, source)
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(cli, ["convert", str(source), str(out)])
    assert result.exit_code == 2
    assert result.stderr == "error: 'z': dtype complex128 cannot be stored in safetensors\n"
    assert not out.exists()
    out.write_bytes(b"old")
    with pytest.raises(CheckpointFormatError):
        convert_checkpoint(source, out, force=True)
    assert out.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_failure_while_streaming_tensors_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckptsurgeon.io.writer as writer

    source = tmp_path / "a.pt"
    torch.save({"a": torch.ones(3), "b": torch.zeros(3)}, source)
    calls = []

    def failing(tensor: torch.Tensor) -> memoryview:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(tensor)

    original = writer.tensor_bytes
    monkeypatch.setattr(writer, "tensor_bytes", failing)
    with pytest.raises(OutputError, match=r"out\.safetensors: writing failed \(disk full\); nothing was written"):
        convert_checkpoint(source, tmp_path / "out.safetensors", dtype="fp16")
    assert not (tmp_path / "out.safetensors").exists()
    assert leftovers(tmp_path) == []


class TiedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.lm_head = nn.Linear(3, 5, bias=False)
        self.lm_head.weight = self.embed.weight


@pytest.mark.parametrize("dtype", [None, "fp16"])
def test_tied_weights_to_safetensors(tmp_path: Path, dtype: str | None) -> None:
    torch.manual_seed(0)
    model = TiedEmbedding()
    sd = model.state_dict()
    assert sd["embed.weight"].data_ptr() == sd["lm_head.weight"].data_ptr()
    torch.save(sd, tmp_path / "tied.pt")
    convert_checkpoint(tmp_path / "tied.pt", tmp_path / "tied.safetensors", dtype=dtype)
    cast = torch.float16 if dtype else torch.float32
    with open_checkpoint(tmp_path / "tied.safetensors") as checkpoint:
        assert list(checkpoint) == ["embed.weight", "lm_head.weight"]
        for name in checkpoint:
            assert torch.equal(checkpoint[name], model.embed.weight.detach().to(cast))
    assert torch.equal(load_file(tmp_path / "tied.safetensors")["lm_head.weight"], model.embed.weight.detach().to(cast))


def test_write_state_dict_round_trip(tmp_path: Path) -> None:
    sd = {"w": torch.randn(2, 3).t(), "i": torch.arange(4, dtype=torch.int32), "b": torch.tensor([True, False]),
          "e": torch.empty(0, 2), "s": torch.tensor(1.5, dtype=torch.float64), "h": torch.ones(2, dtype=torch.bfloat16)}
    for name in ("out.safetensors", "out.pt"):
        write_state_dict(tmp_path / name, sd, metadata={"note": "x"})
        with open_checkpoint(tmp_path / name) as checkpoint:
            assert list(checkpoint) == list(sd)
            assert all(checkpoint[k].dtype == v.dtype and torch.equal(checkpoint[k], v) for k, v in sd.items())
    with open_checkpoint(tmp_path / "out.safetensors") as checkpoint:
        assert dict(checkpoint.info.metadata) == {"note": "x"}
    with pytest.raises(OutputError, match="already exists"):
        write_state_dict(tmp_path / "out.pt", sd)
    with pytest.raises(OutputError, match="is a folder"):
        write_state_dict(tmp_path, sd)
    with pytest.raises(OutputError, match="does not exist"):
        write_state_dict(tmp_path / "missing" / "out.pt", sd)
    assert leftovers(tmp_path) == []


def test_convert_safetensors_copies_bytes_without_torch_casts(tmp_path: Path) -> None:
    sd = {"a": torch.randn(3, 3), "n": torch.tensor(5)}
    write_state_dict(tmp_path / "in.safetensors", sd)
    result = convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert result.cast == 0
    assert load_file(tmp_path / "out.safetensors").keys() == sd.keys()
    assert all(torch.equal(load_file(tmp_path / "out.safetensors")[k], v) for k, v in sd.items())


def test_output_is_an_ordinary_file(tmp_path: Path) -> None:
    """The temporary file is created owner-only; the finished output follows the umask like any file."""
    mask = os.umask(0o022)
    try:
        write_state_dict(tmp_path / "out.safetensors", {"w": torch.ones(2)})
        write_state_dict(tmp_path / "out.pt", {"w": torch.ones(2)})
    finally:
        os.umask(mask)
    assert oct(os.stat(tmp_path / "out.safetensors").st_mode & 0o777) == oct(0o644)
    assert oct(os.stat(tmp_path / "out.pt").st_mode & 0o777) == oct(0o644)


def test_pt_output_does_not_copy_shared_storages(tmp_path: Path) -> None:
    """Tensors viewing one large storage (a flat parameter buffer) are written at their own size."""
    flat = torch.arange(50_000.0)
    sd = {"a": flat[:10], "b": flat[10:20], "c": flat[20:30].view(2, 5).t()}
    torch.save(sd, tmp_path / "flat.pt")
    convert_checkpoint(tmp_path / "flat.pt", tmp_path / "out.pt")
    assert os.path.getsize(tmp_path / "out.pt") < 10_000
    plain = torch.load(tmp_path / "out.pt", weights_only=True)
    assert list(plain) == list(sd) and all(torch.equal(plain[k], v) for k, v in sd.items())


@pytest.mark.parametrize("layout", ["sharded", "folder"])
def test_output_inside_a_folder_input_is_refused(tmp_path: Path, layout: str) -> None:
    import json

    from safetensors.torch import save_file

    sd = {"a": torch.ones(2), "b": torch.zeros(2)}
    if layout == "sharded":
        save_file({"a": sd["a"]}, tmp_path / "s1.safetensors")
        save_file({"b": sd["b"]}, tmp_path / "s2.safetensors")
        (tmp_path / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}))
        victim = tmp_path / "s2.safetensors"
    else:
        torch.save(sd, tmp_path / "pytorch_model.bin")
        victim = tmp_path / "pytorch_model.bin"
    before = victim.read_bytes()
    result = CliRunner().invoke(cli, ["convert", str(tmp_path), str(victim), "--force"])
    assert result.exit_code == 2
    assert result.stderr == f"error: {victim}: the output is also an input; write to another file\n"
    assert victim.read_bytes() == before
    assert leftovers(tmp_path) == []
