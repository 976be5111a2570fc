"""fuse-bn: BatchNorm folded into the conv before it, checked against conv+BN in eval mode on real values."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from safetensors.torch import save_file
from torch import nn

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.errors import MappingError, ShapeError
from ckptsurgeon.examples.resnet import build as build_resnet
from ckptsurgeon.examples.yolov7 import Conv as YoloConv, RepConv
from ckptsurgeon.io import open_checkpoint
from ckptsurgeon.specs import TensorSpec
from ckptsurgeon.surgery.fuse import (FUSED, format_fuse_arg, fuse_bn, fuse_plan, fused_bias, fused_weight,
                                      parse_fuse_arg, scale_output_channels)
from ckptsurgeon.surgery.fuse_check import fused_pairs, to_fused_model
from ckptsurgeon.surgery.fuse_pairs import FusePair, Pairing, Unfused, pair_from_model

_register()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine parameters far from their defaults, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
            if module.affine:
                module.weight.data.copy_(torch.randn(n, generator=generator))
                module.bias.data.copy_(torch.randn(n, generator=generator))
    return model


def save(model: nn.Module, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def fused_copy(model: nn.Module, report: Any, out: Path) -> nn.Module:
    """The deploy model: BNs replaced by Identity, convs with bias, OUT loaded strictly."""
    fused = to_fused_model(copy.deepcopy(model), report)
    with open_checkpoint(out) as checkpoint:
        fused.load_state_dict({name: checkpoint[name] for name in checkpoint}, strict=True)
    return fused.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


def layer_cases() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    return {
        "conv1d": (nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8)), (2, 3, 16)),
        "conv2d": (nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)), (2, 3, 12, 12)),
        "conv3d": (nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), (2, 2, 6, 6, 6)),
        "grouped": (nn.Sequential(nn.Conv2d(8, 12, 3, groups=4, bias=False), nn.BatchNorm2d(12)), (2, 8, 9, 9)),
        "depthwise": (nn.Sequential(nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.BatchNorm2d(6)), (2, 6, 10, 10)),
        "transposed_groups": (nn.Sequential(nn.ConvTranspose2d(6, 9, 3, stride=2, groups=3), nn.BatchNorm2d(9)),
                              (2, 6, 5, 5)),
        "transposed1d": (nn.Sequential(nn.ConvTranspose1d(4, 6, 4, groups=2, bias=False), nn.BatchNorm1d(6)),
                         (2, 4, 7)),
        "no_bias": (nn.Sequential(nn.Conv2d(3, 5, 1, bias=False), nn.BatchNorm2d(5)), (2, 3, 4, 4)),
        "no_affine": (nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5, affine=False, eps=1e-3)),
                      (2, 3, 6, 6)),
    }


# -- the operations, directly ---------------------------------------------------------------------------------

def test_transposed_scaling_puts_each_output_channel_where_the_conv_reads_it():
    conv = nn.ConvTranspose2d(6, 9, 2, groups=3, bias=False)
    scale = torch.arange(1.0, 10.0)
    scaled = scale_output_channels(conv.weight.detach(), scale, transposed=True, groups=3)
    x = torch.randn(1, 6, 3, 3)
    expected = conv(x) * scale.reshape(1, 9, 1, 1)
    assert relative(nn.functional.conv_transpose2d(x, scaled, groups=3), expected) < 1e-6


def test_argument_round_trips():
    pair = FusePair("up", "bn", 1e-3, transposed=True, groups=2)
    assert format_fuse_arg(pair, affine=False) == "0.001,transposed,2,noaffine"
    assert parse_fuse_arg("0.001,transposed,2,noaffine") == (1e-3, True, 2, True, False)
    assert format_fuse_arg(pair, conv_bias=False, weight=False) == "0.001,nobias"
    with pytest.raises(MappingError, match="expected EPS"):
        parse_fuse_arg("1e-5,sideways")


def test_operations_return_float32_and_fold_the_formula():
    w, gamma, beta = torch.randn(4, 2, 3).half(), torch.randn(4), torch.randn(4)
    mean, var, b = torch.randn(4), torch.rand(4) + 0.5, torch.randn(4)
    weight = fused_weight([lambda: w, lambda: gamma, lambda: var], "1e-05")
    bias = fused_bias([lambda: b, lambda: gamma, lambda: beta, lambda: mean, lambda: var], "1e-05")
    scale = gamma / (var + 1e-5).sqrt()
    assert weight.dtype == torch.float32 and bias.dtype == torch.float32
    assert torch.allclose(weight, w.float() * scale[:, None, None], rtol=1e-6)
    assert torch.allclose(bias, (b - mean) * scale + beta, rtol=1e-6, atol=1e-6)
    with pytest.raises(MappingError, match="damaged plan"):
        fused_weight([lambda: w], "1e-05")


# -- layers fused from a file, against conv+BN in eval mode ---------------------------------------------------

@pytest.mark.parametrize("case", list(layer_cases()))
@pytest.mark.parametrize("source", ["model", "pairs"])
def test_fused_layer_equals_conv_then_bn(tmp_path: Path, case: str, source: str):
    model, shape = layer_cases()[case]
    randomize_bn(model, seed=len(case)).eval()
    conv, bn = model[0], model[1]
    pairs = [{"conv": "0", "bn": "1", "eps": bn.eps, "transposed": conv.transposed, "groups": conv.groups}]
    report = fuse_bn(save(model, tmp_path / "in.pt"), str(tmp_path / "out.safetensors"),
                     **({"model": model} if source == "model" else {"pairs": pairs}))
    fused = fused_copy(model, report, tmp_path / "out.safetensors")
    x = torch.randn(shape)
    with torch.no_grad():
        assert relative(fused(x), model(x)) < 1e-5
    assert isinstance(fused[1], nn.Identity) and fused[0].bias is not None
    assert fused_pairs(report) == [("0", "1")]
    assert any(note.startswith("fused 1 into 0 (eps") and "largest relative difference" in note
               for note in report.plan.notes)


def test_resnet_fused_from_its_checkpoint_gives_the_same_output(tmp_path: Path):
    model = randomize_bn(build_resnet(num_classes=10)).eval()
    out = tmp_path / "fused.safetensors"
    report = fuse_bn(save(model, tmp_path / "resnet.pt"), str(out), model=model)
    assert len(fused_pairs(report)) == 53 and not any("left unfused" in n for n in report.plan.notes)
    assert ("layer1.0.downsample.0", "layer1.0.downsample.1") in fused_pairs(report)
    with open_checkpoint(out) as checkpoint:
        keys = set(checkpoint)
    assert "layer2.1.conv2.bias" in keys and not any(".bn" in k or "downsample.1" in k for k in keys)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative(fused_copy(model, report, out)(x), model(x)) < 1e-5


def test_yolov7_conv_block_and_repconv_branches_fuse(tmp_path: Path):
    model = randomize_bn(nn.Sequential(YoloConv(3, 8, 3), RepConv(8, 16))).eval()
    out = tmp_path / "fused.safetensors"
    report = fuse_bn(save(model, tmp_path / "in.safetensors"), str(out), model=model)
    assert set(fused_pairs(report)) == {("0.conv", "0.bn"), ("1.rbr_dense.0", "1.rbr_dense.1"),
                                        ("1.rbr_1x1.0", "1.rbr_1x1.1")}
    assert any(note.startswith("fused 0.bn into 0.conv (eps 0.001): largest relative difference")
               for note in report.plan.notes)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert relative(fused_copy(model, report, out)(x), model(x)) < 1e-5


class ConvOutputUsedTwice(nn.Module):
    """``bn(conv(x)) + conv(x)``: folding would change the second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.input_bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.input_bn(x))
        z = self.bn(y) + y
        return self.head(z.mean((2, 3)))


def test_unfused_batchnorms_are_listed_with_why():
    pairing = pair_from_model(ConvOutputUsedTwice())
    assert pairing.pairs == ()
    assert set(pairing.unfused) == {
        Unfused("bn", "the output of conv is also used by add(...)"),
        Unfused("head.1", "follows a Linear (head.0); only convolutions are fused"),
        Unfused("input_bn", "no conv before it (its input is the model's input)"),
    }


class SharedLayers(nn.Module):
    """One conv called twice (a BatchNorm after each call), one BatchNorm called twice, one never called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn_a, self.bn_b = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.conv2, self.conv3, self.shared_bn = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.spare_bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn_a(self.conv(x)) + self.bn_b(self.conv(x))
        return self.shared_bn(self.conv2(y)) + self.shared_bn(self.conv3(y))


def test_shared_layers_are_left_unfused():
    assert dict(pair_from_model(SharedLayers()).unfused) == {
        "bn_a": "conv is called 2 times in forward", "bn_b": "conv is called 2 times in forward",
        "shared_bn": "called 2 times in forward (one fused conv cannot stand for several calls)",
        "spare_bn": "not called in forward"}


def test_unfused_batchnorm_keys_are_copied_and_say_why(tmp_path: Path):
    model = ConvOutputUsedTwice()
    report = fuse_bn(save(model, tmp_path / "in.pt"), str(tmp_path / "out.pt"), model=model)
    assert report.plan.step_for("bn.running_var").reason == \
        "BatchNorm left unfused: the output of conv is also used by add(...)"
    assert "bn left unfused: the output of conv is also used by add(...)" in report.plan.notes
    assert "nothing to fuse: no conv + BatchNorm pair found" in report.plan.notes
    assert not report.plan.unused


class DataDependent(nn.Module):
    """A forward fx cannot trace (control flow on a tensor value), around Sequentials."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
        self.fc = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.loose_bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        if y.sum() > 0:
            y = self.loose_bn(y)
        return self.fc(y.mean((2, 3)))


def test_sequential_order_when_tracing_fails(tmp_path: Path):
    model = randomize_bn(DataDependent()).eval()
    pairing = pair_from_model(model)
    assert pairing.pairs == (FusePair("stem.0", "stem.1", 1e-5, False, 1, "nn.Sequential order"),)
    assert pairing.notes[0].startswith("paired by nn.Sequential order; torch.fx could not trace DataDependent: ")
    assert dict(pairing.unfused) == {
        "stem.3": "no conv before it (its input is stem.2 (ReLU))",
        "fc.1": "follows a Linear (fc.0); only convolutions are fused",
        "loose_bn": "not inside an nn.Sequential (torch.fx could not trace the model, so only nn.Sequential "
                    "order pairs)"}
    out = tmp_path / "out.safetensors"
    report = fuse_bn(save(model, tmp_path / "in.pt"), str(out), model=model)
    assert any(note.startswith("paired by nn.Sequential order") for note in report.plan.notes)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert relative(fused_copy(model, report, out)(x), model(x)) < 1e-5


def test_fp16_checkpoint_is_fused_in_fp32_and_written_as_fp16(tmp_path: Path):
    model = randomize_bn(nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.BatchNorm2d(8))).eval()
    model_fp16 = copy.deepcopy(model).half()
    out = tmp_path / "out.safetensors"
    report = fuse_bn(save(model_fp16, tmp_path / "in.safetensors"), str(out), model=model)
    assert report.plan.step_for("0.weight").target_dtype == "float16"
    with open_checkpoint(out) as checkpoint:
        assert checkpoint["0.weight"].dtype == torch.float16 and checkpoint["0.bias"].dtype == torch.float16
    fused = fused_copy(model, report, out).float()
    reference = copy.deepcopy(model_fp16).float().eval()   # what the fp16 checkpoint computes
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert relative(fused(x), reference(x)) < 3e-3


# -- planning on shapes only ----------------------------------------------------------------------------------

def conv_bn_specs(n: int, affine: bool, bias: bool) -> dict[str, TensorSpec]:
    keys = {f"c{n}.weight": (4, 2, 3, 3), **({f"c{n}.bias": (4,)} if bias else {}),
            **({f"b{n}.weight": (4,), f"b{n}.bias": (4,)} if affine else {}),
            f"b{n}.running_mean": (4,), f"b{n}.running_var": (4,), f"b{n}.num_batches_tracked": ()}
    return {k: TensorSpec(k, shape, "float32" if shape else "int64") for k, shape in keys.items()}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=6))
def test_every_key_is_accounted_for_exactly_once(layers: list[tuple[bool, bool, bool]]):
    specs: dict[str, TensorSpec] = {"head.weight": TensorSpec("head.weight", (2, 4), "float32")}
    pairs = []
    for n, (affine, bias, fuse) in enumerate(layers):
        specs.update(conv_bn_specs(n, affine, bias))
        pairs += [FusePair(f"c{n}", f"b{n}")] if fuse else []
    plan = fuse_plan(specs, Pairing(tuple(pairs)))
    # fuse-bn's reading of the plan invariant: a BatchNorm's statistics are read by the conv's compute steps
    # *and* listed once as left out of OUT (they are not written under their own name)
    read = {key for step in plan.steps for _, key in step.sources}
    unused = [u.source for u in plan.unused]
    targets = [step.target for step in plan.steps]
    assert len(unused) == len(set(unused)) and len(targets) == len(set(targets))
    assert read | set(unused) == set(specs) and set(targets).isdisjoint(unused)
    assert set(targets) == ({k for k in specs if k not in unused} | {f"{p.conv}.bias" for p in pairs})
    assert {u.source.partition(".")[0] for u in plan.unused} == {p.bn for p in pairs}
    assert all(u.reason == FUSED for u in plan.unused)


def test_pairs_with_the_wrong_channels_name_both_keys_and_shapes():
    specs = conv_bn_specs(0, True, False)
    specs["b0.running_mean"] = TensorSpec("b0.running_mean", (5,), "float32")
    with pytest.raises(ShapeError, match=r"c0.weight is \(4, 2, 3, 3\) \(4 output channels, dim 0\) but "
                                         r"b0.running_mean is \(5,\)"):
        fuse_plan(specs, Pairing((FusePair("c0", "b0"),)))
    with pytest.raises(MappingError, match="the checkpoint has no c9.weight"):
        fuse_plan(specs, Pairing((FusePair("c9", "b0"),)))


# -- the command ----------------------------------------------------------------------------------------------

@pytest.fixture
def resnet_file(tmp_path: Path) -> Path:
    return save(randomize_bn(build_resnet(num_classes=10)), tmp_path / "resnet.pt")


RESNET = ["--model", "ckptsurgeon.examples.resnet:build", "--model-kwargs", '{"num_classes": 10}']


def run(*args: Any) -> Any:
    return CliRunner().invoke(cli, ["fuse-bn", *map(str, args)])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cli_writes_safetensors_and_pt(resnet_file: Path, tmp_path: Path, suffix: str):
    out = tmp_path / f"fused{suffix}"
    result = run(resnet_file, out, *RESNET)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"fuse-bn: 108 tensors written to {out}; 53 fuse_bn_weight, 53 fuse_bn_bias, "
                                    f"2 unchanged, 265 left out")
    assert "note: check: each fused conv against conv+BN in eval mode on a random input" in result.output
    with open_checkpoint(out) as checkpoint:
        assert checkpoint["conv1.bias"].shape == (4,)


def test_cli_json_lists_the_pairs_and_dry_run_writes_nothing(resnet_file: Path, tmp_path: Path):
    out = tmp_path / "fused.safetensors"
    result = run(resnet_file, out, *RESNET, "--json", "--dry-run")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema"] == "ckptsurgeon.report/2" and data["applied"] is False and not out.exists()
    assert "fused bn1 into conv1 (eps 1e-05)" in data["warnings"]
    weight = next(t for t in data["targets"] if t["target"] == "conv1.weight")
    assert weight["method"] == "fuse_bn_weight:1e-05"
    assert [s["key"] for s in weight["sources"]] == ["conv1.weight", "bn1.weight", "bn1.running_var"]
    assert {u["reason"] for u in data["unused"]} == {FUSED}


def test_cli_refuses_out_equal_to_in_and_usage_errors(resnet_file: Path, tmp_path: Path):
    result = run(resnet_file, resnet_file, *RESNET)
    assert result.exit_code == 2 and "the output is also an input" in result.output
    assert run(resnet_file, tmp_path / "o.pt").exit_code == 2
    pairs = tmp_path / "pairs.json"
    pairs.write_text('[["conv1", "bn1"]]')
    assert "--eps goes with --pairs" in run(resnet_file, tmp_path / "o.pt", *RESNET, "--eps", "1e-3").output


def test_cli_pairs_file_with_wrong_channels_exits_2_and_leaves_nothing(resnet_file: Path, tmp_path: Path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["conv1", "bn1"], ["layer1.0.conv1", "layer1.0.bn3"]]))
    before = set(os.listdir(tmp_path))
    result = run(resnet_file, tmp_path / "out.safetensors", "--pairs", pairs)
    assert result.exit_code == 2
    assert "layer1.0.conv1.weight is (4, 4, 1, 1) (4 output channels, dim 0) but layer1.0.bn3.running_mean is " \
           "(16,): layer1.0.conv1 and layer1.0.bn3 do not pair" in result.output
    assert set(os.listdir(tmp_path)) == before


def test_cli_pairs_file_fuses_the_listed_pairs_and_lists_the_rest(resnet_file: Path, tmp_path: Path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["conv1", "bn1"], {"conv": "layer1.0.conv1", "bn": "layer1.0.bn1", "eps": 1e-3}]))
    result = run(resnet_file, tmp_path / "out.safetensors", "--pairs", pairs)
    assert result.exit_code == 0, result.output
    assert "note: fused layer1.0.bn1 into layer1.0.conv1 (eps 0.001): largest relative difference" in result.output
    assert "note: layer1.0.bn2 left unfused: not in the pairs file" in result.output


def test_cli_bad_input_leaves_nothing_behind(tmp_path: Path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    before = set(os.listdir(tmp_path))
    result = run(bad, tmp_path / "out.safetensors", *RESNET)
    assert result.exit_code == 2
    assert set(os.listdir(tmp_path)) == before
