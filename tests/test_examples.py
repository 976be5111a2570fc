"""The stand-in architectures: key naming, forward passes, and inserts that shift exactly what they should."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ckptsurgeon.examples import CBAM, ECA, SEBlock, YoloBody, build_yolov7, make_attention
from ckptsurgeon.examples import official_yolov7
from ckptsurgeon.examples.official_yolov7 import Model
from standins import ModuleListNet, TinyConvNeXt, TinyResNet, TinyViT

# Copies of ../shared/reference (facts about the real checkpoints), kept with the tests so they always run.
REFERENCE = Path(__file__).parent / "data"
KEYS_LISTING = REFERENCE / "yolov7_weights_keys.txt"
OFFICIAL_LAYOUT = REFERENCE / "yolov7_official_pt_layout.txt"
KINDS = ["se", "cbam", "eca"]


def read_listing(path: Path) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, dtype = line.split("\t")
            rows.append((name, tuple(ast.literal_eval(shape)), dtype))
    return rows


def specs(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def shifted(names: list[str], container: str, at: int) -> list[str]:
    """Names after one module is inserted at ``container.at``: indices from ``at`` on move up one."""
    pattern = re.compile(rf"{re.escape(container)}\.(\d+)\.")
    out = []
    for name in names:
        found = pattern.match(name)
        if found and int(found.group(1)) >= at:
            name = f"{container}.{int(found.group(1)) + 1}.{name[found.end():]}"
        out.append(name)
    return out


def assert_inserted(before: nn.Module, after: nn.Module, container: str, at: int) -> list[str]:
    """Every old tensor reappears, shifted, in order, with its shape; return the new keys."""
    old, new = specs(before), specs(after)
    added = [name for name in new if name.startswith(f"{container}.{at}.")]
    assert added, f"nothing inserted at {container}.{at}"
    moved = shifted(list(old), container, at)
    assert [name for name in new if name not in added] == moved
    assert {name: new[name] for name in moved} == dict(zip(moved, old.values()))
    return added


def count_calls(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


# --- YOLOv7 (nets/yolo.py layout) -----------------------------------------------------------------


def test_yolov7_full_width_equals_reference_keys_shapes_and_dtypes() -> None:
    reference = read_listing(KEYS_LISTING)
    with torch.device("meta"):
        model = YoloBody(num_classes=80, width=32)
    got = [(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in model.state_dict().items()]
    assert len(got) == len(reference) == 558
    assert got == reference


def test_yolov7_default_width_keeps_reference_keys() -> None:
    reference = [name for name, _, _ in read_listing(KEYS_LISTING)]
    assert list(build_yolov7().state_dict()) == reference


def test_yolov7_forward_returns_three_maps_coarsest_first() -> None:
    maps = build_yolov7()(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 255, s, s) for s in (2, 4, 8)]
    maps = build_yolov7(num_classes=2, width=2)(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [21, 21, 21]


@pytest.mark.parametrize("kind", KINDS)
def test_yolov7_head_attention_adds_named_children_only(kind: str) -> None:
    plain, model = build_yolov7(width=2), build_yolov7(width=2, head_attention=kind)
    old, new = specs(plain), specs(model)
    assert {n: new[n] for n in old} == old
    added = {n.split(".")[0] for n in new if n not in old}
    assert added == {"feat1_att", "feat2_att", "feat3_att"}
    calls = [count_calls(getattr(model, f"feat{i}_att")) for i in (1, 2, 3)]
    assert len(model(torch.randn(1, 3, 64, 64))) == 3
    assert calls == [[1], [1], [1]]


def test_yolov7_head_attention_keys_sit_after_the_backbone() -> None:
    names = list(build_yolov7(width=2, head_attention="se").state_dict())
    first_new = names.index("feat1_att.fc.0.weight")
    assert names[first_new - 1].startswith("backbone.dark5.")
    assert names[first_new + 6].startswith("sppcspc.")


@pytest.mark.parametrize("kind", KINDS)
def test_yolov7_backbone_insert_shifts_dark3_only(kind: str) -> None:
    plain, model = build_yolov7(width=2), build_yolov7(width=2, backbone_insert=kind)
    added = assert_inserted(plain, model, "backbone.dark3", 1)
    assert all(name.startswith("backbone.dark3.1.") for name in added)
    assert len(model.backbone.dark3) == 3
    calls = count_calls(model.backbone.dark3[1])
    model(torch.randn(1, 3, 64, 64))
    assert calls == [1]


# --- attention blocks ----------------------------------------------------------------------------


@pytest.mark.parametrize("block", [SEBlock(16), CBAM(16), ECA(16)])
def test_attention_keeps_shape(block: nn.Module) -> None:
    x = torch.randn(2, 16, 5, 5)
    assert block(x).shape == x.shape


def test_attention_keys() -> None:
    assert specs(SEBlock(32)) == {"fc.0.weight": (2, 32), "fc.2.weight": (32, 2)}
    assert specs(CBAM(32, kernel_size=3)) == {
        "channel.mlp.0.weight": (2, 32), "channel.mlp.2.weight": (32, 2), "spatial.conv.weight": (1, 2, 3, 3),
    }
    assert specs(ECA(32, k_size=5)) == {"conv.weight": (1, 1, 5)}


def test_attention_hidden_width_is_floored_at_one_unless_asked() -> None:
    assert specs(SEBlock(3))["fc.0.weight"] == (1, 3)
    with pytest.warns(UserWarning, match="zero-element"):
        degenerate = make_attention("SE", 3, min_hidden=0)
    assert specs(degenerate) == {"fc.0.weight": (0, 3), "fc.2.weight": (3, 0)}
    x = torch.randn(1, 3, 4, 4)
    assert torch.allclose(degenerate(x), 0.5 * x)  # the gate of a zero-width MLP is sigmoid(0)


def test_make_attention_names_the_choices() -> None:
    with pytest.raises(ValueError, match="se, cbam, eca"):
        make_attention("gc", 8)


# --- official YOLOv7 layout (models/yolo.py Model) -----------------------------------------------

DETECT = len(official_yolov7.SPEC) - 1


def test_official_keys_are_flat_model_indices() -> None:
    state = specs(Model(num_classes=80, width=8))
    assert all(re.match(r"model\.\d+\.", name) for name in state)
    assert list(state)[:2] == ["model.0.conv.weight", "model.0.bn.weight"]
    prefix = f"model.{DETECT}."
    head = {n.removeprefix(prefix): s for n, s in state.items() if n.startswith(prefix)}
    assert head["anchors"] == (3, 3, 2) and head["anchor_grid"] == (3, 1, 3, 1, 1, 2)
    assert head["m.0.weight"] == (255, 16, 1, 1) and head["m.0.bias"] == (255,)
    assert head["ia.0.implicit"] == (1, 16, 1, 1) and head["im.2.implicit"] == (1, 255, 1, 1)
    assert "model.32.rbr_dense.0.weight" in state and "model.15.cv7.conv.weight" in state


def test_official_anchors_are_stored_in_grid_cells() -> None:
    detect = Model(width=4).model[-1]
    assert detect.stride.tolist() == [8.0, 16.0, 32.0]
    assert detect.anchors[0, 0].tolist() == [12 / 8, 16 / 8]
    assert detect.anchor_grid[2, 0, 0, 0, 0].tolist() == [142.0, 110.0]


def test_official_forward_returns_one_map_per_level() -> None:
    maps = Model(num_classes=2, width=4)(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 3, s, s, 7) for s in (8, 4, 2)]


def test_official_classes_are_those_the_pickle_names() -> None:
    named = {line.rsplit(".", 1)[1] for line in OFFICIAL_LAYOUT.read_text().splitlines()
             if line.startswith(("models.", "torch.nn."))}
    used = {type(module).__name__ for module in Model(width=4).modules()}
    assert named <= used


@pytest.mark.parametrize(("at", "kind"), [(0, "se"), (5, "CBAM"), (12, "se"), (15, "eca"), (DETECT, "cbam")])
def test_official_insert_shifts_later_indices(at: int, kind: str) -> None:
    plain, model = Model(width=4), Model(width=4, insert_at=at, insert=kind)
    assert_inserted(plain, model, "model", at)
    assert len(model.model) == len(plain.model) + 1
    calls = count_calls(model.model[at])
    assert len(model(torch.randn(1, 3, 64, 64))) == 3
    assert calls == [1]


def test_official_insert_moves_from_references() -> None:
    model = Model(width=4, insert_at=13, insert="se")
    assert model.model[13].f == 12  # the attention gates layer 12 ...
    assert model.model[24].f == 13  # ... and stands in for it (the lateral conv read 12)
    assert model.model[25].f == [24, 23]  # relative references still mean the same layers
    assert model.model[19].f == 14  # the lateral conv that read old layer 13


def test_official_insert_at_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="insert_at=36"):
        Model(width=4, insert_at=36)


# --- test-only stand-ins -------------------------------------------------------------------------


def test_resnet_naming_and_forward() -> None:
    model = TinyResNet()
    names = list(model.state_dict())
    assert names[:2] == ["conv1.weight", "bn1.weight"]
    assert {"layer1.0.conv1.weight", "layer1.1.bn2.running_var", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight", "fc.weight"} <= set(names)
    assert not any(name.startswith("layer1.0.downsample") for name in names)  # same shape: no shortcut conv
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_resnet_block_insert_shifts_that_stage_only() -> None:
    model = TinyResNet(block_insert=(2, 1, "se"))
    added = assert_inserted(TinyResNet(), model, "layer2", 1)
    assert added == ["layer2.1.fc.0.weight", "layer2.1.fc.2.weight"]
    calls = count_calls(model.layer2[1])
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    assert calls == [1]


def test_vit_naming_and_forward() -> None:
    state = specs(TinyViT())
    assert list(state)[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert state["pos_embed"] == (1, 17, 16) and state["cls_token"] == (1, 1, 16)
    block = [n.removeprefix("blocks.1.") for n in state if n.startswith("blocks.1.")]
    assert block == [f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                     for p in ("weight", "bias")]
    assert state["blocks.0.attn.qkv.weight"] == (48, 16)
    assert list(state)[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert TinyViT()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_convnext_naming_and_insert() -> None:
    plain, model = TinyConvNeXt(), TinyConvNeXt(insert=(1, 1))
    state = specs(plain)
    assert {f"stages.0.blocks.1.{p}" for p in ("gamma", "dwconv.weight", "norm.weight", "pwconv1.weight",
                                                "pwconv2.weight")} <= set(state)
    assert "stages.1.downsample.1.weight" in state and not any("stages.0.downsample" in n for n in state)
    added = assert_inserted(plain, model, "stages.1.blocks", 1)
    new = specs(model)
    assert [new[n] for n in added] == [new[n.replace("blocks.1.", "blocks.0.")] for n in added]
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_modulelist_net_insert_copies_the_next_layers_name_and_shape() -> None:
    plain, model = ModuleListNet(n=4), ModuleListNet(n=4, insert_at=3)
    old, new = specs(plain), specs(model)
    assert len({shape for name, shape in old.items() if name.endswith("weight")}) == 4
    assert {name: new[name] for name in old} == old  # the trap: every old name and shape still fits
    assert new["layers.4.weight"] == old["layers.3.weight"]  # yet old layers.3 now lives at layers.4
    assert_inserted(plain, model, "layers", 3)
    x = torch.randn(2, 4, 9)
    assert model(x).shape == x.shape and plain(x).shape == x.shape


def test_modulelist_net_insert_at_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="insert_at=4"):
        ModuleListNet(n=4, insert_at=4)
