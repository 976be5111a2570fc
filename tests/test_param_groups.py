"""Parameter groups: names, lr multipliers, no decay on norms and biases, layer decay, frozen and lr_zero."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from ckptsurgeon.errors import OptionError
from ckptsurgeon.model.describe import describe_keys, describe_model
from ckptsurgeon.model.freeze import freeze
from ckptsurgeon.model.groups import layer_depths, param_groups
from ckptsurgeon.options import FreezeOptions, GroupRule, UnfreezeStage
from finetune_models import BackboneHead
from standins import TinyResNet, TinyViT

BACKBONE = GroupRule("backbone", ("backbone",), lr_scale=0.1)


def summary(groups: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(g["name"], len(g["params"]), g["lr"], g["weight_decay"], g["lr_scale"])  # type: ignore[arg-type]
            for g in groups]


def test_groups_are_named_scaled_and_split_by_decay() -> None:
    groups = param_groups(BackboneHead(), FreezeOptions(lr=0.1, weight_decay=1e-4, groups=(BACKBONE,)))
    assert summary(groups) == [
        ("backbone", 2, pytest.approx(0.01), 1e-4, 0.1),            # the two convs
        ("backbone/no_decay", 4, pytest.approx(0.01), 0.0, 0.1),    # BatchNorm weights and biases
        ("default", 1, 0.1, 1e-4, 1.0),                             # head.weight
        ("default/no_decay", 1, 0.1, 0.0, 1.0),                     # head.bias
    ]


def test_the_first_matching_rule_wins_and_sets_its_weight_decay() -> None:
    rules = (GroupRule("late", ("backbone.4", "head"), lr_scale=2.0, weight_decay=0.5), BACKBONE)
    groups = param_groups(BackboneHead(), FreezeOptions(lr=1.0, groups=rules))
    assert summary(groups) == [("backbone", 2, pytest.approx(0.1), 0.0, 0.1),
                               ("backbone/no_decay", 2, pytest.approx(0.1), 0.0, 0.1),
                               ("late/no_decay", 3, 2.0, 0.0, 2.0),    # backbone.4 (BatchNorm), head.bias
                               ("late", 1, 2.0, 0.5, 2.0)]             # head.weight
    assert [p.shape for p in groups[0]["params"]] == [torch.Size([4, 3, 3, 3]), torch.Size([4, 4, 3, 3])]


def test_without_the_no_decay_switch_norms_and_biases_decay_too() -> None:
    groups = param_groups(BackboneHead(), FreezeOptions(lr=0.1, weight_decay=1e-4, no_weight_decay_norm_bias=False))
    assert summary(groups) == [("default", 8, 0.1, 1e-4, 1.0)]


def test_frozen_parameters_are_left_out_and_empty_groups_not_emitted() -> None:
    model = BackboneHead()
    freeze(model, ["backbone"])
    groups = param_groups(model, FreezeOptions(groups=(BACKBONE,)), lr=0.1)
    assert [g["name"] for g in groups] == ["default", "default/no_decay"]


def test_lr_zero_mode_keeps_frozen_parameters_in_zero_lr_groups() -> None:
    model = BackboneHead()
    frozen = {name for name, _ in model.named_parameters() if name.startswith("backbone.")}
    groups = param_groups(model, FreezeOptions(lr=0.1, weight_decay=1e-4, mode="lr_zero", groups=(BACKBONE,)),
                          frozen=frozen)
    assert summary(groups) == [("frozen/backbone", 2, 0.0, 0.0, 0.0), ("frozen/backbone/no_decay", 4, 0.0, 0.0, 0.0),
                               ("default", 1, 0.1, 1e-4, 1.0), ("default/no_decay", 1, 0.1, 0.0, 1.0)]
    assert all(param.requires_grad for param in model.parameters())


def test_a_base_learning_rate_is_required() -> None:
    with pytest.raises(OptionError, match=r"base learning rate.*\[optimizer\] lr"):
        param_groups(BackboneHead(), FreezeOptions())


def test_layer_depths_of_a_vit_and_a_resnet() -> None:
    vit = layer_depths([name for name, _ in TinyViT(depth=2).named_parameters()])
    assert (vit["cls_token"], vit["patch_embed.proj.weight"], vit["blocks.0.attn.qkv.weight"],
            vit["blocks.1.mlp.fc2.bias"], vit["norm.weight"], vit["head.bias"]) == (0, 0, 1, 2, 3, 3)
    resnet = layer_depths([name for name, _ in TinyResNet().named_parameters()])
    assert (resnet["conv1.weight"], resnet["layer1.0.conv1.weight"], resnet["layer2.1.bn2.bias"],
            resnet["fc.weight"]) == (0, 1, 2, 3)


def test_layer_decay_scales_each_block_towards_the_input() -> None:
    groups = param_groups(TinyViT(depth=2), FreezeOptions(lr=1.0, weight_decay=0.05, layer_decay=0.5))
    scales = {g["name"]: g["lr_scale"] for g in groups}
    assert scales == {"default/depth0/no_decay": 0.125, "default/depth0": 0.125,
                      "default/depth1/no_decay": 0.25, "default/depth1": 0.25,
                      "default/depth2/no_decay": 0.5, "default/depth2": 0.5,
                      "default/depth3/no_decay": 1.0, "default/depth3": 1.0}
    assert all(g["lr"] == g["lr_scale"] for g in groups)
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay["default/depth0"] == 0.05 and decay["default/depth0/no_decay"] == 0.0
    assert groups[0]["name"] == "default/depth0"      # cls_token, registered first: 3-D, so it decays


def test_layer_decay_multiplies_the_rule_scale() -> None:
    rule = GroupRule("blocks", ("blocks",), lr_scale=0.1)
    groups = param_groups(TinyViT(depth=2), FreezeOptions(lr=1.0, groups=(rule,), layer_decay=0.5,
                                                          no_weight_decay_norm_bias=False))
    assert {g["name"]: g["lr_scale"] for g in groups} == {
        "default/depth0": 0.125, "blocks/depth1": pytest.approx(0.025), "blocks/depth2": pytest.approx(0.05),
        "default/depth3": 1.0}


@settings(max_examples=40, deadline=None)
@given(frozen=st.sets(st.sampled_from([name for name, _ in TinyResNet().named_parameters()])),
       lr_zero=st.booleans(), layer_decay=st.sampled_from([None, 0.7]))
def test_every_parameter_lands_in_exactly_one_group(frozen: set[str], lr_zero: bool, layer_decay: float | None) -> None:
    model = TinyResNet()
    options = FreezeOptions(lr=0.1, mode="lr_zero" if lr_zero else "requires_grad", layer_decay=layer_decay,
                            groups=(GroupRule("late", ("layer2", "fc"), 0.5),))
    groups = param_groups(model, options, frozen=frozen)
    placed = [id(p) for g in groups for p in g["params"]]
    expected = [p for n, p in model.named_parameters() if lr_zero or n not in frozen]
    assert len(placed) == len(set(placed)) and set(placed) == {id(p) for p in expected}
    assert all(g["params"] for g in groups)
    assert len({g["name"] for g in groups}) == len(groups)
    assert all(g["lr"] == 0.0 for g in groups if g["name"].startswith("frozen/"))


def test_describe_model_counts_modules_batchnorm_and_groups() -> None:
    model = BackboneHead()
    freeze(model, ["backbone"])
    state = describe_model(model, FreezeOptions(lr=0.1))
    assert [(m.module, m.trainable, m.frozen, m.trainable_numel, m.frozen_numel) for m in state.modules] == [
        ("backbone", 0, 6, 0, 108 + 8 + 144 + 8), ("head", 2, 0, 15, 0)]
    assert [(b.name, b.mode) for b in state.batchnorm] == [("backbone.1", "train"), ("backbone.4", "train")]
    assert [(g.name, g.count, g.numel, g.lr) for g in state.groups] == [("default", 1, 12, 0.1),
                                                                         ("default/no_decay", 1, 3, 0.1)]
    assert state.as_dict()["groups"][0]["name"] == "default"


def test_describe_keys_predicts_from_a_checkpoint_without_a_model() -> None:
    keys = [(name, tuple(value.shape)) for name, value in BackboneHead().state_dict().items()]
    options = FreezeOptions(freeze=("backbone",), freeze_types=("BatchNorm2d", "Conv2d"), batchnorm="frozen",
                            unfreeze=(UnfreezeStage(5, ("backbone.3", "backbone.4")),), groups=(BACKBONE,))
    at_start = describe_keys(keys, options)
    assert [(m.module, m.trainable, m.frozen) for m in at_start.modules] == [("backbone", 0, 6), ("head", 2, 0)]
    assert [(b.name, b.mode) for b in at_start.batchnorm] == [("backbone.1", "frozen"), ("backbone.4", "frozen")]
    assert [(s.rule, s.count) for s in at_start.selections] == [("backbone", 6), ("BatchNorm2d", 4), ("Conv2d", 0)]
    assert at_start.notes == ("module type 'Conv2d' is unknown without a model: it selects nothing here",)
    assert [g.name for g in at_start.groups] == ["default", "default/no_decay"]
    assert at_start.groups[0].lr is None
    later = describe_keys(keys, options, epoch=7, lr=0.1)
    assert [(b.name, b.mode) for b in later.batchnorm] == [("backbone.1", "frozen"), ("backbone.4", "train")]
    assert [(g.name, g.count, g.lr) for g in later.groups] == [
        ("default", 1, 0.1), ("default/no_decay", 1, 0.1),
        ("backbone@5", 1, pytest.approx(0.01)), ("backbone/no_decay@5", 2, pytest.approx(0.01))]


def test_describe_of_a_live_model_and_of_its_keys_agree() -> None:
    options = FreezeOptions(freeze=("backbone",), lr=0.1, groups=(BACKBONE,))
    model = BackboneHead()
    freeze(model, options.freeze)
    live = describe_model(model, options)
    keys = [(name, tuple(value.shape)) for name, value in BackboneHead().state_dict().items()]
    offline = describe_keys(keys, options)
    assert live.modules == offline.modules and live.groups == offline.groups


def nothing() -> nn.Module:
    return nn.Sequential()


def test_a_model_without_parameters_has_no_groups() -> None:
    assert param_groups(nothing(), FreezeOptions(lr=0.1)) == []
