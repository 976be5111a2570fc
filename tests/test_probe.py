"""``probe``: what a module takes and returns (shapes and dtypes, nested), its children's outputs in call
order, on the meta device when the forward allows it, the user's model untouched, and two interfaces compared
with each difference worded (``output 0, dim 1 is 256, expected 288``)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NamedTuple

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.examples.resnet import build as build_resnet
from ckptsurgeon.examples.yolov7 import build_yolov7
from ckptsurgeon.model.nested import Node, Where, describe_value, flatten
from ckptsurgeon.model.probe import ProbeError, compare_probes, copy_to_meta, pair_stages, probe

_register()
POINTS = [(6, 20000, 4)]


class PointNet(nn.Module):
    """The issue's backbone: (B, N, 4) points to (features (B, C, N), idx (B, N, 3) int64, global (B, N))."""

    def __init__(self, channels: int = 288, outputs: int = 3) -> None:
        super().__init__()
        self.mlp1 = nn.Linear(4, 64)
        self.mlp2 = nn.Linear(64, channels)
        self.outputs = outputs

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.mlp2(torch.relu(self.mlp1(points)))
        idx = torch.zeros(points.shape[0], points.shape[1], 3, dtype=torch.int64, device=points.device)
        return (features.transpose(1, 2), idx, features.amax(-1))[: self.outputs]


def build_pointnet(channels: int = 288, outputs: int = 3) -> PointNet:
    return PointNet(channels, outputs)


class Boxes(NamedTuple):
    boxes: torch.Tensor
    scores: torch.Tensor


@dataclasses.dataclass
class Extra:
    count: int
    name: str


class NestedOutputs(nn.Module):
    """Returns a dict holding a list, a None, a tuple of plain leaves, a named tuple and a dataclass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        y = self.conv(x)
        return {"feats": [y, y[:, :4].to(torch.float16)], "aux": None, "meta": (3, 1.5, "x"),
                "det": Boxes(y.flatten(2), y.mean((2, 3))), "extra": Extra(1, "a")}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, scale: float = 1.0) -> torch.Tensor:
        return self.proj(x) * scale if mask is None else self.proj(x).masked_fill(mask, 0.0)


class TwoInputs(nn.Module):
    """Two positional inputs; calls ``block`` with keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.block = Block()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed(x), mask=mask > 0, scale=2.0)


class ChildCalledTwice(nn.Module):
    """``conv`` runs twice, ``act`` once between; ``aux`` is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.aux = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.conv(x)))


class CallsItem(nn.Module):
    """Reads a value with ``.item()``: impossible on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * x.abs().max().item()


class BranchesOnData(nn.Module):
    """Chooses its output shape from the values: impossible on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) if x.sum() > -1e9 else x


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def texts(rows: list[tuple[str, Node]]) -> list[tuple[str, str]]:
    return [(path, node.text()) for path, node in rows]


def no_hooks(model: nn.Module) -> bool:
    return not any(sub._forward_hooks or sub._forward_pre_hooks or sub._forward_hooks_with_kwargs
                   or sub._forward_pre_hooks_with_kwargs for sub in model.modules())


def test_the_pointnet_outputs_by_path_on_the_meta_device() -> None:
    result = probe(PointNet(288), input_shapes=POINTS)
    assert result.device == "meta" and result.notes == () and result.calls == 1
    assert texts(result.rows()) == [("input[0]", "(6, 20000, 4) float32"), ("output[0]", "(6, 288, 20000) float32"),
                                    ("output[1]", "(6, 20000, 3) int64"), ("output[2]", "(6, 20000) float32")]
    assert [(stage.label, stage.type_name, stage.output.text()) for stage in result.stages] == [
        ("mlp1", "Linear", "(6, 20000, 64) float32"), ("mlp2", "Linear", "(6, 20000, 288) float32")]


def test_256_against_288_channels_is_worded_from_the_new_side() -> None:
    old, new = probe(PointNet(288), input_shapes=POINTS), probe(PointNet(256), input_shapes=POINTS)
    assert [str(d) for d in compare_probes(old, new)] == ["output 0, dim 1 is 256, expected 288",
                                                          "stage mlp2, dim 2 is 256, expected 288"]
    assert [(d.section, d.path, d.kind) for d in compare_probes(old, new)] == [("output", "output[0]", "shape"),
                                                                               ("stage", "mlp2", "shape")]
    assert compare_probes(old, old) == []


def test_a_missing_output_an_input_dtype_and_dict_keys_are_worded() -> None:
    three, two = probe(PointNet(outputs=3), input_shapes=POINTS), probe(PointNet(outputs=2), input_shapes=POINTS)
    assert [str(d) for d in compare_probes(three, two)] == ["output 2: missing (the old returns 3 outputs, the new 2)"]
    assert [str(d) for d in compare_probes(two, three)] == ["output 2: new (the old returns 2 outputs, the new 3)"]
    fp32 = probe(Scale(), input_shapes=[(2, 3)])
    fp16 = probe(Scale(), input_shapes=[(2, 3)], dtype=torch.float16)
    assert [str(d) for d in compare_probes(fp32, fp16)] == ["input 0, dtype float16, expected float32",
                                                            "output, dtype float16, expected float32"]
    p4 = describe_value({"p4": torch.zeros(1, 8), "p5": torch.zeros(1, 8)})
    p3 = describe_value({"p3": torch.zeros(1, 8), "p4": torch.zeros(1, 9, 2)})
    from ckptsurgeon.model.nested import compare_nodes

    assert [str(d) for d in compare_nodes(p4, p3, Where("output"), "output")] == [
        "output 'p4', shape (1, 9, 2), expected (1, 8)", "output 'p5': missing key", "output 'p3': new key"]
    assert [str(d) for d in compare_nodes(describe_value((1, [torch.zeros(2)])), describe_value((1, (torch.zeros(3),))),
                                          Where("output"), "output")] == [
        "output 1: tuple of 1, expected list of 1", "output 1[0], dim 0 is 3, expected 2"]


def test_nested_outputs_tuples_lists_dicts_none_leaves_and_fields() -> None:
    result = probe(NestedOutputs(), input_shapes=[(2, 3, 4, 4)])
    assert texts(flatten(result.output, Where("output"))) == [
        ("output['feats'][0]", "(2, 8, 4, 4) float32"), ("output['feats'][1]", "(2, 4, 4, 4) float16"),
        ("output['aux']", "None"), ("output['meta'][0]", "int"), ("output['meta'][1]", "float"),
        ("output['meta'][2]", "str"), ("output['det'].boxes", "(2, 8, 16) float32"),
        ("output['det'].scores", "(2, 8) float32"), ("output['extra'].count", "int"), ("output['extra'].name", "str")]
    assert result.output.as_dict()["items"]["det"] == {
        "type": "fields", "class": "Boxes", "items": {"boxes": {"type": "tensor", "shape": [2, 8, 16], "dtype": "float32"},
                                                      "scores": {"type": "tensor", "shape": [2, 8], "dtype": "float32"}}}
    assert describe_value([]).text() == "list of 0" and describe_value({"a": 1}).text() == "dict of 1 key"


def test_several_inputs_and_the_keyword_arguments_a_submodule_is_called_with() -> None:
    whole = probe(TwoInputs(), input_shapes=[(2, 7, 3), (2, 7, 5)])
    assert texts(whole.rows()) == [("input[0]", "(2, 7, 3) float32"), ("input[1]", "(2, 7, 5) float32"),
                                   ("output", "(2, 7, 5) float32")]
    block = probe(TwoInputs(), "block", input_shapes=[(2, 7, 3), (2, 7, 5)])
    assert texts(block.rows()) == [("input[0]", "(2, 7, 5) float32"), ("input['mask']", "(2, 7, 5) bool"),
                                   ("input['scale']", "float"), ("output", "(2, 7, 5) float32")]
    direct = probe(TwoInputs(), "block", inputs=[torch.zeros(1, 5)], input_kwargs={"scale": 3.0}, into_module=True)
    assert direct.into_module and texts(direct.rows()) == [("input[0]", "(1, 5) float32"), ("input['scale']", "float"),
                                                            ("output", "(1, 5) float32")]
    assert [str(d) for d in compare_probes(block, direct)] == [
        "input 0, shape (1, 5), expected (2, 7, 5)", "input 'mask': missing keyword argument",
        "output, shape (1, 5), expected (2, 7, 5)", "stage proj, shape (1, 5), expected (2, 7, 5)"]


def test_children_in_call_order_a_child_called_twice_shows_twice() -> None:
    result = probe(ChildCalledTwice(), input_shapes=[(1, 4, 6, 6)])
    assert [(stage.name, stage.call, stage.label) for stage in result.stages] == [
        ("conv", 1, "conv"), ("act", 1, "act"), ("conv", 2, "conv (call 2)")]
    assert result.not_called == ("aux",)
    assert [(stage["name"], stage["call"]) for stage in result.as_dict()["stages"]] == [("conv", 1), ("act", 1), ("conv", 2)]


def test_stages_pair_by_name_then_by_position() -> None:
    twice = probe(ChildCalledTwice(), input_shapes=[(1, 4, 6, 6)])
    once = probe(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()), input_shapes=[(1, 4, 6, 6)])
    assert [(pair.label, pair.by) for pair in pair_stages(twice, once)] == [
        ("conv / 0", "position"), ("act / 1", "position"), ("conv (call 2)", "name")]
    assert [str(d) for d in compare_probes(twice, once)] == [
        "stage conv (call 2): missing (the new module calls conv fewer times)"]


def test_yolov7_backbone_three_features_and_its_stages() -> None:
    result = probe(build_yolov7(), "backbone", input_shapes=[(2, 3, 64, 64)])
    assert texts(result.rows()) == [("input[0]", "(2, 3, 64, 64) float32"), ("output[0]", "(2, 128, 8, 8) float32"),
                                    ("output[1]", "(2, 256, 4, 4) float32"), ("output[2]", "(2, 256, 2, 2) float32")]
    assert [stage.name for stage in result.stages] == ["stem", "dark2", "dark3", "dark4", "dark5"]
    fed = probe(build_yolov7(), "backbone.dark3", input_shapes=[(1, 64, 16, 16)], into_module=True)
    assert texts(fed.rows())[-1] == ("output", "(1, 128, 8, 8) float32") and fed.device == "meta"
    layer = probe(build_resnet(), "layer1", input_shapes=[(1, 3, 32, 32)])
    assert [(stage.name, stage.type_name) for stage in layer.stages] == [("0", "Bottleneck"), ("1", "Bottleneck"),
                                                                       ("2", "Bottleneck")]


def test_a_builder_is_built_on_meta_and_allocates_nothing() -> None:
    built: list[nn.Module] = []

    def builder() -> nn.Module:
        built.append(PointNet(256))
        return built[-1]

    result = probe(builder, input_shapes=POINTS)
    assert result.device == "meta" and len(built) == 1
    assert all(tensor.device.type == "meta" for tensor in built[0].parameters())
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    copied = copy_to_meta(tied)
    assert all(tensor.device.type == "meta" for tensor in copied.parameters())
    assert copied[1].weight is copied[0].weight and tied[0].weight.device.type == "cpu"


def test_a_forward_calling_item_or_branching_on_values_falls_back_to_cpu() -> None:
    result = probe(CallsItem(), input_shapes=[(2, 3)])
    assert result.device == "cpu" and texts(result.rows())[-1] == ("output", "(2, 2) float32")
    assert result.notes == ("ran on cpu: the forward raises on the meta device in the model's own forward (CallsItem) "
                            "given input[0] (2, 3) float32: RuntimeError: Tensor.item() cannot be called on meta tensors",)
    branching = probe(BranchesOnData(), input_shapes=[(2, 3)])
    assert branching.device == "cpu" and "(BranchesOnData) given input[0] (2, 3) float32" in branching.notes[0]
    built: list[nn.Module] = []
    rebuilt = probe(lambda: built.append(CallsItem()) or built[-1], input_shapes=[(2, 3)])
    assert rebuilt.device == "cpu" and [p.device.type for model in built for p in model.parameters()] == \
        ["meta", "meta", "cpu", "cpu"]


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_the_users_model_is_left_as_it_was(device: str) -> None:
    model = PointNet(288).train()
    model.mlp1.eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    probe(model, "mlp2", input_shapes=POINTS, device=device)
    assert no_hooks(model)
    assert [sub.training for sub in model.modules()] == [True, False, True]
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(tensor.device.type == "cpu" for tensor in model.parameters())
    failing = CallsItem()
    handle = failing.register_forward_hook(lambda *args: None)
    assert probe(failing, input_shapes=[(2, 3)]).device == "cpu"
    assert list(failing._forward_hooks) == [handle.id] and failing.training
    handle.remove()
    with pytest.raises(ProbeError):
        probe(failing, input_shapes=[(2, 5)])
    assert no_hooks(failing) and failing.training


def test_errors_name_the_closest_modules_and_where_the_forward_raised() -> None:
    with pytest.raises(ProbeError, match=r"^PointNet has no module 'mlp3'; the closest names: 'mlp1', 'mlp2'$"):
        probe(PointNet(), "mlp3", input_shapes=POINTS)
    with pytest.raises(ProbeError, match=r"^the forward raises on cpu in 'backbone\.stem\.0\.conv' \(Conv2d\) given "
                                         r"input\[0\] \(2, 4, 64, 64\) float32: RuntimeError: Given groups=1"):
        probe(build_yolov7(), "backbone", input_shapes=[(2, 4, 64, 64)])
    with pytest.raises(ProbeError, match=r"does not call 'aux'; feed the inputs to it directly"):
        probe(ChildCalledTwice(), "aux", input_shapes=[(1, 4, 6, 6)])
    with pytest.raises(ProbeError, match=r"input shape \(2, -1\)"):
        probe(Scale(), input_shapes=[(2, -1)])


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["probe", *args])


POINTNET = ["--model", "test_probe:build_pointnet", "--input-shape", "6,20000,4"]


def test_cli_prints_the_interface_and_its_stages() -> None:
    result = run(*POINTNET, "--model-kwargs", '{"channels": 256}')
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "--model test_probe:build_pointnet: the whole model (PointNet), run on meta", "",
        "  input[0]   (6, 20000, 4) float32", "  output[0]  (6, 256, 20000) float32",
        "  output[1]  (6, 20000, 3) int64", "  output[2]  (6, 20000) float32", "",
        "stages: the direct children of the whole model (PointNet), in call order",
        "  mlp1  Linear  (6, 20000, 64) float32", "  mlp2  Linear  (6, 20000, 256) float32"]


def test_cli_compare_exits_1_with_the_table_and_the_differences() -> None:
    result = run(*POINTNET, "--model-kwargs", '{"channels": 256}', "--compare", "test_probe:build_pointnet")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "  !  output[0]  (6, 288, 20000) float32  (6, 256, 20000) float32" in lines
    assert "     output[1]  (6, 20000, 3) int64      (6, 20000, 3) int64" in lines
    assert lines[-3:] == ["2 differences (got, expected the old's):", "  output 0, dim 1 is 256, expected 288",
                          "  stage mlp2, dim 2 is 256, expected 288"]
    same = run(*POINTNET, "--compare", "test_probe:build_pointnet")
    assert same.exit_code == 0 and same.output.splitlines()[-1] == "no differences: the interfaces agree"


def test_cli_json_has_the_shapes_and_the_differences() -> None:
    result = run(*POINTNET, "--compare", "test_probe:build_pointnet", "--compare-kwargs", '{"outputs": 2}', "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["schema"] == "ckptsurgeon.probe/1" and data["device"] == "meta"
    assert [item["shape"] for item in data["output"]["items"]] == [[6, 288, 20000], [6, 20000, 3], [6, 20000]]
    assert data["inputs"]["args"] == [{"type": "tensor", "shape": [6, 20000, 4], "dtype": "float32"}]
    assert data["differences"] == [{"section": "output", "path": "output[2]", "kind": "new",
                                    "message": "output 2: new (the old returns 2 outputs, the new 3)"}]


def test_cli_bad_input_exits_2_with_one_line() -> None:
    for args, message in [
        (["--module", "mlp3"], "error: PointNet has no module 'mlp3'; the closest names: 'mlp1', 'mlp2'\n"),
        (["--input-shape", "6,x"], "error: Invalid value for '--input-shape': '6,x' is not a shape: give sizes >= 0 "
                                   "separated by commas, e.g. 6,20000,4 (see `ckptsurgeon probe --help`)\n"),
        (["--dtype", "fp16", "--dtype", "fp32"], "error: 2 --dtype for 1 --input-shape: give one --dtype for all "
                                                 "inputs, or one per --input-shape (see `ckptsurgeon probe --help`)\n"),
    ]:
        result = CliRunner().invoke(cli, ["probe", *POINTNET, *args], prog_name="ckptsurgeon")
        assert (result.exit_code, result.stderr) == (2, message)
    failing = run("--model", "ckptsurgeon.examples.yolov7:build_yolov7", "--module", "backbone",
                  "--input-shape", "2,4,64,64")
    assert failing.exit_code == 2 and failing.stderr.count("\n") == 1
    assert failing.stderr.startswith("error: the forward raises on cpu in 'backbone.stem.0.conv' (Conv2d) given "
                                     "input[0] (2, 4, 64, 64) float32: RuntimeError:")


def test_cli_notes_the_fallback_and_builds_on_cpu_with_device_cpu() -> None:
    result = run("--model", "ckptsurgeon.examples.yolov7:build_yolov7", "--input-shape", "1,3,32,32",
                 "--device", "cpu", "--module", "backbone.stem")
    assert result.exit_code == 0 and "run on cpu" in result.stdout.splitlines()[0]
