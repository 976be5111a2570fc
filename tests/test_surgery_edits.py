"""rename, drop, extract, cast, strip: streamed, reported, atomic; inputs never modified."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.examples.official_yolov7 import Model
from ckptsurgeon.examples.yolov7 import YoloBody
from ckptsurgeon.surgery.edits import cast_checkpoint, extract_prefix, rename_checkpoint

_register()


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)])


def read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    loaded = torch.load(path, weights_only=True)
    return dict(loaded.get("model", loaded))


@pytest.fixture
def training_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A training checkpoint: model, EMA (other values), optimizer, epoch."""
    torch.manual_seed(0)
    model, ema = YoloBody(width=1).state_dict(), YoloBody(width=1).state_dict()
    path = tmp_path / "last.pt"
    torch.save({"model": model, "ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                "epoch": 12}, path)
    return path, model, ema


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_rename_and_back_is_bit_identical(tmp_path: Path, training_file: tuple[Path, dict, dict],  # type: ignore[type-arg]
                                          suffix: str) -> None:
    source, model, _ = training_file
    there, back = tmp_path / f"there{suffix}", tmp_path / f"back{suffix}"
    assert run("rename", source, there, "--rule", r"^backbone\.=model.backbone.").exit_code == 0
    moved = read(there)
    assert list(moved)[0] == "model.backbone.stem.0.conv.weight"
    assert run("rename", there, back, "--rule", r"^model\.backbone\.=backbone.").exit_code == 0
    returned = read(back)
    assert list(returned) == list(model)
    assert all(torch.equal(returned[k], model[k]) and returned[k].dtype == model[k].dtype for k in model)


def test_rename_by_prefix_table_collision_and_empty_names(tmp_path: Path,
                                                          training_file: tuple[Path, dict, dict]) -> None:  # type: ignore[type-arg]
    source, model, _ = training_file
    out = tmp_path / "o.safetensors"
    report = rename_checkpoint(source, str(out), [r"^sppcspc\..*="], prefixes=["backbone.dark{}.=stage{}."])
    written = read(out)
    assert "stage3.0.cv1.conv.weight" in written and not any(k.startswith("sppcspc.") for k in written)
    assert torch.equal(written["stage3.0.cv1.conv.weight"], model["backbone.dark3.0.cv1.conv.weight"])
    assert {u.reason for u in report.plan.unused} == {"dropped by rule"}
    clash = run("rename", source, tmp_path / "c.safetensors", "--rule", r"^yolo_head_P\d\.=head.")
    assert clash.exit_code == 2
    assert "rename gives two keys the name 'head.weight': 'yolo_head_P3.weight' and 'yolo_head_P4.weight'" in clash.output
    assert not (tmp_path / "c.safetensors").exists()


def test_drop_extract_and_their_reports(tmp_path: Path, training_file: tuple[Path, dict, dict]) -> None:  # type: ignore[type-arg]
    source, model, _ = training_file
    out = tmp_path / "d.safetensors"
    result = run("drop", source, out, "--pattern", "*.num_batches_tracked", "--pattern", "missing.*", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema"] == "ckptsurgeon.report/2" and data["target"] == "drop"
    assert data["warnings"][-1] == "--pattern 'missing.*' selects no key"
    assert all(t["sources"] == [{"input": 0, "key": t["target"]}] for t in data["targets"])
    assert set(read(out)) == {k for k in model if not k.endswith("num_batches_tracked")}
    backbone = tmp_path / "b.safetensors"
    report = extract_prefix(source, str(backbone), "backbone", strip=True)
    written = read(backbone)
    assert set(written) == {k[len("backbone."):] for k in model if k.startswith("backbone.")}
    assert torch.equal(written["dark5.1.cv1.conv.weight"], model["backbone.dark5.1.cv1.conv.weight"])
    assert len(report.plan.unused) == len(model) - len(written)
    nothing = run("extract", source, tmp_path / "n.safetensors", "--prefix", "neck")
    assert nothing.exit_code == 2 and "no key under 'neck.' left out" in nothing.output


def test_cast_keeps_integer_buffers(tmp_path: Path, training_file: tuple[Path, dict, dict]) -> None:  # type: ignore[type-arg]
    source, model, _ = training_file
    out = tmp_path / "half.pt"
    report = cast_checkpoint(source, str(out), "fp16")
    written = read(out)
    for key, value in model.items():
        expected = value.half() if value.is_floating_point() else value
        assert written[key].dtype == expected.dtype and torch.equal(written[key], expected)
    assert report.counts().cast == sum(v.is_floating_point() for k, v in model.items()
                                       if not k.endswith("num_batches_tracked"))


def test_strip_keeps_the_weights_or_the_ema(tmp_path: Path, training_file: tuple[Path, dict, dict]) -> None:  # type: ignore[type-arg]
    source, model, ema = training_file
    weights, averaged = tmp_path / "w.safetensors", tmp_path / "e.safetensors"
    result = run("strip", source, weights)
    assert result.exit_code == 0, result.output
    assert "kept the state dict 'model'" in result.output and "'ema'" in result.output
    kept = read(weights)
    assert all(torch.equal(kept[k], model[k]) for k in model)
    assert run("strip", source, averaged, "--use-ema").exit_code == 0
    from_ema = read(averaged)
    assert all(torch.equal(from_ema[k], ema[k]) for k in ema)
    assert not torch.equal(from_ema["yolo_head_P3.weight"], model["yolo_head_P3.weight"])


def test_strip_the_official_yolov7_training_file_to_fp32_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    official = Model(num_classes=80, width=1)
    source, out = tmp_path / "yolov7.pt", tmp_path / "yolov7_fp32.safetensors"
    torch.save({"epoch": -1, "best_fitness": None, "model": copy.deepcopy(official).half(),
                "ema": copy.deepcopy(official).half(), "updates": 10, "optimizer": None}, source)
    result = run("strip", source, out, "--use-ema", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    written = read(out)
    expected = official.half().float().state_dict()
    assert set(written) == set(expected)
    for key, value in expected.items():
        if value.is_floating_point():
            assert written[key].dtype == torch.float32 and torch.equal(written[key], value)


@pytest.mark.parametrize("command", [["rename", "--rule", "a=b"], ["drop", "--pattern", "x"],
                                     ["extract", "--prefix", "backbone"], ["cast", "--dtype", "fp16"], ["strip"]])
def test_every_command_refuses_out_equal_to_in_and_leaves_nothing_on_bad_input(
        tmp_path: Path, training_file: tuple[Path, dict, dict], command: list[str]) -> None:  # type: ignore[type-arg]
    source, _, _ = training_file
    before = source.read_bytes()
    same = run(command[0], source, source, *command[1:])
    assert same.exit_code == 2 and "input" in same.output and source.read_bytes() == before
    broken = tmp_path / "broken.pt"
    broken.write_bytes(before[: len(before) // 2])
    out = tmp_path / "out.safetensors"
    bad = run(command[0], broken, out, *command[1:])
    assert bad.exit_code == 2 and bad.output.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.pt", "last.pt"]


def test_dry_run_writes_nothing_and_report_file(tmp_path: Path, training_file: tuple[Path, dict, dict]) -> None:  # type: ignore[type-arg]
    source, _, _ = training_file
    out, report = tmp_path / "o.safetensors", tmp_path / "r.json"
    result = run("cast", source, out, "--dtype", "bf16", "--dry-run", "--report", report)
    assert result.exit_code == 0 and not out.exists()
    assert result.output.startswith("cast: 558 tensors planned (dry run: nothing read or written); 466 cast")
    data = json.loads(report.read_text())
    assert data["applied"] is False and data["targets"][0]["target_dtype"] == "bfloat16"
