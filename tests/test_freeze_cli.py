"""``ckptsurgeon freeze``: per-module trainable/frozen counts, BatchNorm modes and optimizer groups at an epoch,
for a live model or a checkpoint's keys, agreeing with the library's FineTune."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from ckptsurgeon import FineTune, load_recipe, write_state_dict
from ckptsurgeon.cli import _register, cli
from ckptsurgeon.examples.yolov7 import YoloBody

_register()
ROOT = Path(__file__).parent.parent
RECIPE = ROOT / "recipes" / "yolov7-se-head.toml"
MODEL = ["--model", "ckptsurgeon.examples.yolov7:build_yolov7", "--model-kwargs", '{"head_attention": "se"}']


def freeze(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["freeze", *map(str, args)])


def as_json(result: Result) -> dict:   # type: ignore[type-arg]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_yolov7_recipe_freezes_the_backbone_until_epoch_50() -> None:
    model = YoloBody(head_attention="se")
    backbone = [name for name, _ in model.named_parameters() if name.startswith("backbone.")]
    before = as_json(freeze(*MODEL, "--recipe", RECIPE, "--epoch", "49", "--json"))
    rows = {row["module"]: row for row in before["modules"]}
    assert rows["backbone"]["frozen"] == len(backbone) and rows["backbone"]["trainable"] == 0
    assert all(row["frozen"] == 0 for name, row in rows.items() if name != "backbone")
    modes = {layer["name"]: layer["mode"] for layer in before["batchnorm"]}
    assert all(mode == ("eval" if name.startswith("backbone.") else "train") for name, mode in modes.items())
    assert before["recipe"]["path"] == str(RECIPE)
    after = as_json(freeze(*MODEL, "--recipe", RECIPE, "--epoch", "50", "--json"))
    assert all(row["frozen"] == 0 for row in after["modules"])
    assert {layer["mode"] for layer in after["batchnorm"]} == {"train"}
    added = [group for group in after["groups"] if group["name"].endswith("@50")]
    assert sum(group["count"] for group in added) == len(backbone)


def test_the_cli_agrees_with_finetune_in_a_training_script() -> None:
    model = YoloBody(head_attention="se")
    finetune = FineTune(model, load_recipe(RECIPE).freeze)
    optimizer = torch.optim.SGD(finetune.param_groups(), momentum=0.937)
    shown = as_json(freeze(*MODEL, "--recipe", RECIPE, "--json"))
    assert [(g["name"], g["count"], g["lr"], g["weight_decay"]) for g in shown["groups"]] == [
        (g["name"], len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    assert sum(row["frozen"] for row in shown["modules"]) == sum(
        not p.requires_grad for p in model.parameters())


def test_a_checkpoints_keys_give_the_same_picture(tmp_path: Path) -> None:
    template = tmp_path / "yolo_se.safetensors"
    write_state_dict(template, YoloBody(head_attention="se").state_dict())
    for epoch in ("0", "50"):
        live = as_json(freeze(*MODEL, "--recipe", RECIPE, "--epoch", epoch, "--json"))
        keys = as_json(freeze("--target", template, "--recipe", RECIPE, "--epoch", epoch, "--json"))
        assert keys["modules"] == live["modules"]
        assert [g["name"] for g in keys["groups"]] == [g["name"] for g in live["groups"]]
        assert [(b["name"], b["mode"]) for b in keys["batchnorm"]] == [(b["name"], b["mode"]) for b in live["batchnorm"]]


def test_text_output_and_overrides_and_warnings() -> None:
    result = freeze(*MODEL, "--recipe", RECIPE, "--freeze", "yolo_head_P*", "--freeze", "no_such_module",
                    "--batchnorm", "frozen")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith("(mode requires_grad, BatchNorm policy frozen)")
    head = next(line for line in lines if line.split()[:1] == ["yolo_head_P3"])
    assert head.split()[1:] == ["0", "(0)", "2", "(16.57K)"]
    assert "BatchNorm: 41 frozen, 51 train" in result.stdout
    assert "warning: pattern 'no_such_module' selects no parameters of --model" in result.stderr


def test_freeze_what_the_transfer_loads(tmp_path: Path) -> None:
    source = tmp_path / "yolov7_weights.pth"
    torch.save(YoloBody().state_dict(), source)
    recipe = tmp_path / "r.toml"
    recipe.write_text("schema = 1\n[freeze]\ntransferred = true\n[optimizer]\nlr = 0.01\n")
    shown = as_json(freeze(*MODEL, "--recipe", recipe, "--source", source, "--json"))
    rows = {row["module"]: row for row in shown["modules"]}
    # everything loads from the plain YOLOv7 except the SE blocks, which are new and train
    assert all(row["trainable"] == (2 if name.endswith("_att") else 0) for name, row in rows.items())
    assert shown["selections"] == [{"rule": "transferred", "kind": "transferred",
                                    "count": sum(row["frozen"] for row in shown["modules"])}]
    missing = freeze(*MODEL, "--recipe", recipe)
    assert missing.exit_code == 2
    assert "([freeze] transferred = true): give the pretrained checkpoint with --source CKPT" in missing.output


def test_usage_errors_are_one_line() -> None:
    result = freeze("--recipe", RECIPE)
    assert result.exit_code == 2
    assert "give the model as either --model MODULE:CALLABLE or --target TEMPLATE" in result.output
