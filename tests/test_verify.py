"""verify: where a migrated model stops computing what the pretrained one did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file
from torch import nn

import ckptsurgeon as cs
from ckptsurgeon.cli import _register, cli
from ckptsurgeon.examples.yolov7 import YoloBody
from ckptsurgeon.model.verify import Verification, verify
from standins import TinyResNet

_register()
YOLO = "ckptsurgeon.examples.yolov7:build_yolov7"


def pretrained_yolo() -> YoloBody:
    torch.manual_seed(0)
    model = YoloBody(width=2)
    for module in model.modules():   # statistics a fresh layer does not have
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def migrated(original: nn.Module, model: nn.Module, **options: object) -> nn.Module:
    cs.transfer(original.state_dict(), model, **options)  # type: ignore[arg-type]
    return model


def test_an_identical_migration_is_zero_everywhere() -> None:
    original = pretrained_yolo()
    result = verify(original, migrated(original, YoloBody(width=2)), input_shapes=[(1, 3, 64, 64)])
    assert result.ok and result.first_divergence is None and result.inserted == ()
    assert len(result.modules) > 300   # every module, activations and upsampling included, compared
    assert all(d.max_abs == 0 and d.rel_error == 0 for d in (*result.modules, *result.outputs))


def test_an_inserted_se_is_where_the_function_changed() -> None:
    original = pretrained_yolo()
    model = migrated(original, YoloBody(width=2, head_attention="se"), init=["feat*_att.fc.2.weight=zeros"])
    result = verify(original, model, input_shapes=[(1, 3, 64, 64)])
    first = result.first_divergence
    assert first is not None and first.name == "feat1_att" and first.inserted
    assert first.rel_error == pytest.approx(0.5) and "multiplies its input by 0.500" in first.note
    before = result.modules[:result.modules.index(first)]
    assert before and all(d.max_abs == 0 for d in before)   # the whole backbone matches bit for bit
    assert result.inserted == ("feat1_att", "feat2_att", "feat3_att")
    assert not result.ok


def test_two_swapped_layers_are_caught_at_the_first_of_them() -> None:
    original = pretrained_yolo()
    model = migrated(original, YoloBody(width=2))
    a, b = model.conv3_for_upsample1.cv1.conv, model.conv3_for_upsample1.cv2.conv   # same shape, a runs first
    assert a.weight.shape == b.weight.shape
    with torch.no_grad():
        a.weight.copy_(original.conv3_for_upsample1.cv2.conv.weight)
        b.weight.copy_(original.conv3_for_upsample1.cv1.conv.weight)
    result = verify(original, model, input_shapes=[(1, 3, 64, 64)])
    first = result.first_divergence
    assert first is not None and first.name == "conv3_for_upsample1.cv1.conv"
    assert first.partner == "conv3_for_upsample1.cv1.conv" and first.rel_error > 0.1
    assert not result.ok


def test_a_resized_head_differs_only_in_its_new_channels() -> None:
    torch.manual_seed(0)
    original = TinyResNet(num_classes=10).eval()
    model = migrated(original, TinyResNet(num_classes=12), resize=["fc.*=slice_pad"])
    result = verify(original, model, input_shapes=[(2, 3, 16, 16)])
    assert result.ok and result.first_divergence is None
    head = next(d for d in result.modules if d.name == "fc")
    assert head.max_abs == 0 and head.shape == (2, 10)
    assert head.note == "compared on the 10 channels slice_pad kept; 2 new"
    assert all(d.max_abs == 0 for d in result.modules)
    assert result.outputs[0].note == head.note


def test_a_resized_yolo_head_is_compared_anchor_by_anchor() -> None:
    """With the transfer's plan, the 3 anchors x (5 + 3 classes) rows the yolo_head resize kept are compared
    with the rows they came from; planning anew guesses slice_pad, which mixes anchors up."""
    original = pretrained_yolo()
    model = YoloBody(num_classes=3, width=2)
    report = cs.transfer(original.state_dict(), model, resize=["yolo_head_P*=yolo_head:3"])
    result = verify(original, model, plan=report.plan, input_shapes=[(1, 3, 64, 64)])
    heads = [d for d in result.modules if d.name.startswith("yolo_head_P")]
    assert len(heads) == 3 and all(d.max_abs == 0 for d in heads)
    assert heads[0].note == "compared on the 24 channels yolo_head:3 kept; 231 of the original's left out"
    assert result.ok
    guessed = verify(original, model, input_shapes=[(1, 3, 64, 64)])
    assert guessed.first_divergence is not None and guessed.first_divergence.name == "yolo_head_P5"
    assert "slice_pad" in guessed.first_divergence.note


class Shared(nn.Module):
    """One block called twice, and nested outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        y = self.block(self.block(x))
        return {"logits": self.out(y), "features": [y, None]}


def test_calls_and_nested_outputs_are_compared_one_by_one() -> None:
    torch.manual_seed(0)
    original, model = Shared(), Shared()
    cs.transfer(original.state_dict(), model)
    with torch.no_grad():
        model.out.bias.add_(1.0)
    result = verify(original, model, input_shapes=[(3, 4)])
    calls = [(d.name, d.call, d.max_abs) for d in result.modules if d.name == "block"]
    assert calls == [("block", 0, 0.0), ("block", 1, 0.0)]
    outputs = {d.name: d for d in result.outputs}
    assert set(outputs) == {"output['logits']", "output['features'][0]"}
    assert outputs["output['logits']"].max_abs == pytest.approx(1.0) and outputs["output['features'][0]"].max_abs == 0
    assert result.first_divergence is not None and result.first_divergence.name == "out"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["verify", *map(str, args)])


@pytest.fixture
def yolo_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The pretrained YOLOv7 weights, the SE model's transferred weights and the transfer's report."""
    original = pretrained_yolo()
    source, out, report = tmp_path / "yolov7_weights.pth", tmp_path / "se.safetensors", tmp_path / "report.json"
    torch.save(original.state_dict(), source)
    result = CliRunner().invoke(cli, ["transfer", str(source), "--model", YOLO, "--model-kwargs",
                                      '{"width": 2, "head_attention": "se"}', "--init", "feat*_att.fc.2.weight=zeros",
                                      "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    return source, out, report


def cli_args(source: Path, out: Path) -> list[str | Path]:
    return ["--original", YOLO, "--original-kwargs", '{"width": 2}', "--original-weights", source,
            "--model", YOLO, "--model-kwargs", '{"width": 2, "head_attention": "se"}', "--weights", out]


def test_cli_tells_the_se_story_and_exits_3(yolo_files: tuple[Path, Path, Path]) -> None:
    source, out, report = yolo_files
    result = run(*cli_args(source, out), "--input-shape", "1,3,64,64", "--report", report)
    assert result.exit_code == 3, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("verify: the final outputs differ beyond 0.0001")
    assert lines[1].startswith("the function first changes at feat1_att, an inserted module (no partner in the "
                               "original): multiplies its input by 0.500 (relative change 0.5); every module after "
                               "it sees features the pretrained weights were not trained on")
    assert lines[2] == "  a sigmoid gate whose last layer starts at zero opens at sigmoid(0) = 0.5"


def test_cli_json_with_inputs_from_a_file_and_the_same_plan_either_way(tmp_path: Path,
                                                                        yolo_files: tuple[Path, Path, Path]) -> None:
    source, out, report = yolo_files
    inputs = tmp_path / "inputs.safetensors"
    save_file({"images": torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))}, str(inputs))
    planned = run(*cli_args(source, out), "--inputs", inputs, "--json")
    reported = run(*cli_args(source, out), "--inputs", inputs, "--json", "--report", report)
    assert planned.exit_code == reported.exit_code == 3
    data = json.loads(planned.output)
    assert data == json.loads(reported.output)
    assert data["first_divergence"] == "feat1_att" and data["inserted"] == ["feat1_att", "feat2_att", "feat3_att"]


def test_cli_identical_weights_exit_0(tmp_path: Path) -> None:
    source = tmp_path / "w.pt"
    torch.save(pretrained_yolo().state_dict(), source)
    args = ["--original", YOLO, "--original-kwargs", '{"width": 2}', "--original-weights", source,
            "--model", YOLO, "--model-kwargs", '{"width": 2}', "--weights", source, "--input-shape", "1,3,32,32"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("verify: the final outputs agree within 0.0001 (largest relative error 0 at ")


def test_cli_bad_inputs_are_one_line_exit_2(tmp_path: Path, yolo_files: tuple[Path, Path, Path]) -> None:
    source, out, _ = yolo_files
    wrong = run(*cli_args(source, source)[:-2], "--weights", source, "--input-shape", "1,3,32,32")
    assert wrong.exit_code == 2
    assert wrong.output.startswith(f"error: --weights {source} does not fit the model: 6 keys missing")
    shape = run(*cli_args(source, out), "--input-shape", "1,3,a")
    assert shape.exit_code == 2 and "--input-shape '1,3,a': expected sizes separated by commas" in shape.output
    neither = run(*cli_args(source, out))
    assert neither.exit_code == 2 and "--input-shape N,C,H,W (repeatable) or --inputs FILE" in neither.output
    bad_report = tmp_path / "r.json"
    bad_report.write_text('{"schema": "ckptsurgeon.report/2"}')
    broken = run(*cli_args(source, out), "--input-shape", "1,3,32,32", "--report", bad_report)
    assert broken.exit_code == 2 and "not a readable transfer report (KeyError: 'targets')" in broken.output
    bad_report.write_text("{}")
    unknown = run(*cli_args(source, out), "--input-shape", "1,3,32,32", "--report", bad_report)
    assert unknown.exit_code == 2 and "report schema None, this ckptsurgeon reads" in unknown.output


def test_verification_as_dict_is_json(tmp_path: Path) -> None:
    original = pretrained_yolo()
    result: Verification = verify(original, migrated(original, YoloBody(width=2)), input_shapes=[(1, 3, 32, 32)])
    data = json.loads(json.dumps(result.as_dict()))
    assert data["ok"] is True and data["modules"][0]["shape"] == [1, 2, 32, 32]
