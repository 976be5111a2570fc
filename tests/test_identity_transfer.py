"""``--init '<module>=identity'``: inserted modules start as the identity where their structure allows, and
the report (and verify) say which could not and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import ckptsurgeon as cs
from ckptsurgeon.cli import _register, cli
from ckptsurgeon.examples.yolov7 import YoloBody
from ckptsurgeon.model.verify import verify
from ckptsurgeon.specs import specs_of

_register()


class Adapter(nn.Module):
    """A residual adapter: x + up(relu(down(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, channels // 2, 1)
        self.up = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class GatedSE(nn.Module):
    """Squeeze-and-excitation with biases: a gate that can start open."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // 2)
        self.fc2 = nn.Linear(channels // 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


class Net(nn.Module):
    """stem -> [inserted] -> body -> head; ``insert`` names the inserted kind."""

    def __init__(self, insert: str | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        inserted = {"adapter": lambda: Adapter(8), "se": lambda: GatedSE(8),
                    "conv": lambda: nn.Conv2d(8, 8, 3, padding=1)}
        self.extra = inserted[insert]() if insert else nn.Identity()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.extra(self.stem(x))).mean(dim=(2, 3)))


def pretrained() -> Net:
    torch.manual_seed(0)
    net = Net()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("kind, structure, bound", [("adapter", "residual", 1e-5), ("conv", "dirac", 1e-5),
                                                    ("se", "gate", 1e-2)])
def test_an_inserted_module_starts_as_the_identity(kind: str, structure: str, bound: float) -> None:
    original = pretrained()
    model = Net(kind)
    report = cs.transfer(original.state_dict(), model, init=["extra=identity"])
    assert [(s.module, s.kind, s.ok) for s in report.identity] == [("extra", structure, True)]
    steps = [s for s in report.plan.steps if s.target.startswith("extra.")]
    assert steps and all(s.method == "identity:extra" for s in steps)
    result = verify(original, model, input_shapes=[(2, 3, 16, 16)])
    inserted = next(d for d in result.modules if d.name == "extra")
    assert inserted.rel_error <= bound
    assert all(d.rel_error <= bound for d in result.outputs)
    if structure == "gate":
        assert inserted.rel_error == pytest.approx(1 - torch.sigmoid(torch.tensor(5.0)).item(), rel=1e-3)
        assert report.identity[0].expected_error == pytest.approx(inserted.rel_error, rel=1e-3)
    # without the rule the inserted module changes the function
    plain = Net(kind)
    cs.transfer(original.state_dict(), plain)
    assert verify(original, plain, input_shapes=[(2, 3, 16, 16)]).first_divergence is not None


def test_the_rule_names_the_outermost_module_its_pattern_matches() -> None:
    source, target = specs_of(Net().state_dict()), specs_of(Net("adapter").state_dict())
    plan = cs.make_plan(source, target, init=["ext*=identity"])
    assert {s.method for s in plan.steps if s.target.startswith("extra.")} == {"identity:extra"}
    assert all(s.method in (None, "target") for s in plan.steps if not s.target.startswith("extra."))


def test_a_bias_free_se_cannot_start_as_the_identity_and_the_report_says_why(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source, out, report = tmp_path / "yolov7_weights.pth", tmp_path / "se.safetensors", tmp_path / "r.json"
    torch.save(YoloBody(width=2).state_dict(), source)
    result = CliRunner().invoke(cli, ["transfer", str(source), "--model", "ckptsurgeon.examples.yolov7:build_yolov7",
                                      "--model-kwargs", '{"width": 2, "head_attention": "se"}',
                                      "--init", "feat*_att=identity", "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [(entry["module"], entry["ok"]) for entry in data["identity"]] == [
        ("feat1_att", False), ("feat2_att", False), ("feat3_att", False)]
    warning = next(w for w in data["warnings"] if w.startswith("feat1_att cannot start as the identity: "))
    assert "no bias" in warning and "sigmoid" in warning
    assert warning in result.output.replace("\n  ", " ") or "feat1_att cannot start as the identity" in result.output


def test_verify_says_whether_an_inserted_module_could_start_as_the_identity() -> None:
    original = pretrained()
    model = Net("adapter")
    cs.transfer(original.state_dict(), model)
    result = verify(original, model, input_shapes=[(2, 3, 16, 16)])
    assert result.first_divergence is not None and result.first_divergence.name == "extra"
    assert "extra: --init 'extra=identity' starts it as the identity (residual)" in result.notes
    yolo = YoloBody(width=2, head_attention="se")
    torch.manual_seed(0)
    plain = YoloBody(width=2)
    cs.transfer(plain.state_dict(), yolo)
    notes = verify(plain, yolo, input_shapes=[(1, 3, 32, 32)]).notes
    assert any(note.startswith("feat1_att: no weights make it the identity: ") and "no bias" in note for note in notes)


def test_an_identity_start_needs_a_live_model(tmp_path: Path) -> None:
    source, template = tmp_path / "s.safetensors", tmp_path / "t.safetensors"
    cs.write_state_dict(source, Net().state_dict())
    cs.write_state_dict(template, Net("adapter").state_dict())
    result = CliRunner().invoke(cli, ["transfer", str(source), "--target", str(template), "-o",
                                      str(tmp_path / "o.safetensors"), "--init", "extra=identity"])
    assert result.exit_code == 2
    assert "reads the module's structure: transfer into a live model (--model MODULE:CALLABLE)" in result.output
    assert not (tmp_path / "o.safetensors").exists()
