"""BatchNorm under frozen parameters: eval | frozen | train, FrozenBatchNorm's state dicts and outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckptsurgeon.errors import OptionError
from ckptsurgeon.model.batchnorm import apply_batchnorm_policy, batchnorm_states
from ckptsurgeon.model.freeze import freeze, unfreeze
from ckptsurgeon.model.frozen_bn import FrozenBatchNorm
from ckptsurgeon.model.groups import param_groups
from ckptsurgeon.options import FreezeOptions
from finetune_models import AffinelessNormBlock, BackboneHead, batches, seeded, snapshot, train_steps

STATS = ("running_mean", "running_var", "num_batches_tracked")


def stats_of(model: nn.Module, layer: str) -> dict[str, torch.Tensor]:
    state = snapshot(model)
    return {key: state[f"{layer}.{key}"] for key in STATS}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def frozen_backbone(policy: str) -> nn.Module:
    model = seeded(BackboneHead)
    freeze(model, ["backbone"])
    apply_batchnorm_policy(model, policy)
    return model


def forward_in_train_mode(model: nn.Module, times: int = 2) -> None:
    for images, _ in batches(times):
        model.train()
        with torch.no_grad():
            model(images)


def test_requires_grad_off_alone_still_updates_running_statistics() -> None:
    model = seeded(BackboneHead)
    freeze(model, ["backbone"])
    before = stats_of(model, "backbone.1")
    forward_in_train_mode(model)
    assert not same(stats_of(model, "backbone.1"), before)


@pytest.mark.parametrize("policy", ["eval", "frozen"])
def test_eval_and_frozen_keep_statistics_through_repeated_train_calls(policy: str) -> None:
    model = frozen_backbone(policy)
    before = stats_of(model, "backbone.1")
    for _ in range(3):
        model.train()
        model.eval()
    forward_in_train_mode(model, times=3)
    assert same(stats_of(model, "backbone.1"), before)
    assert [state.mode for state in batchnorm_states(model)] == [policy, policy]


def test_train_policy_leaves_statistics_updating() -> None:
    model = frozen_backbone("train")
    before = stats_of(model, "backbone.1")
    forward_in_train_mode(model)
    assert not same(stats_of(model, "backbone.1"), before)


def test_eval_policy_normalises_with_running_statistics_in_train_mode() -> None:
    model = frozen_backbone("eval")
    images, _ = batches(1)[0]
    model.eval()
    expected = model(images)
    model.train()
    assert torch.equal(model(images), expected)


@pytest.mark.parametrize("policy", ["eval", "frozen"])
def test_unfreezing_undoes_the_policy(policy: str) -> None:
    model = frozen_backbone(policy)
    values = snapshot(model)
    change = unfreeze(model, ["backbone"])
    assert [state.name for state in change.batchnorm] == ["backbone.1", "backbone.4"]
    assert type(model.backbone[1]) is nn.BatchNorm2d and model.backbone[1].weight.requires_grad
    assert all(torch.equal(values[key], value) for key, value in snapshot(model).items())
    assert "backbone.1.weight" in change.changed
    before = stats_of(model, "backbone.1")
    forward_in_train_mode(model)
    assert not same(stats_of(model, "backbone.1"), before)
    assert [state.mode for state in batchnorm_states(model)] == ["train", "train"]


def test_a_layer_with_trainable_parameters_is_left_in_train() -> None:
    model = seeded(BackboneHead)
    freeze(model, ["backbone.0", "backbone.1", "backbone.3"])
    states = apply_batchnorm_policy(model, "eval")
    assert [(s.name, s.mode, s.parameters_frozen) for s in states] == [
        ("backbone.1", "eval", True), ("backbone.4", "train", False)]


def test_an_affineless_layer_follows_the_module_around_it() -> None:
    """It has no parameters of its own: the block's conv decides."""
    model = AffinelessNormBlock()
    assert apply_batchnorm_policy(model, "eval")[0].mode == "train"
    freeze(model, ["conv"])
    assert apply_batchnorm_policy(model, "frozen")[0].mode == "frozen"
    assert isinstance(model.norm, FrozenBatchNorm) and model.norm.weight is None
    unfreeze(model, ["conv"])
    assert type(model.norm) is nn.BatchNorm2d and not model.norm.affine


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(OptionError, match="'off'.*eval, frozen, train"):
        apply_batchnorm_policy(BackboneHead(), "off")


LAYERS = [(nn.BatchNorm1d, {}, (4, 5)), (nn.BatchNorm1d, {}, (4, 5, 7)), (nn.BatchNorm2d, {}, (4, 5, 3, 3)),
          (nn.BatchNorm3d, {}, (2, 5, 2, 3, 3)), (nn.BatchNorm2d, {"affine": False}, (4, 5, 3, 3))]
BatchNormType = type[nn.modules.batchnorm._BatchNorm]


def trained_layer(kind: BatchNormType, options: dict[str, bool],
                  shape: tuple[int, ...]) -> nn.modules.batchnorm._BatchNorm:
    """A layer (5 channels) with random affine values and running statistics after three batches."""
    torch.manual_seed(0)
    layer = kind(5, **options)
    if layer.affine:
        nn.init.normal_(layer.weight)
        nn.init.normal_(layer.bias)
    layer.train()
    for _ in range(3):
        layer(torch.randn(shape) * 3 + 1)
    return layer.eval()


@pytest.mark.parametrize(("kind", "options", "shape"), LAYERS)
def test_frozen_batchnorm_outputs_equal_eval_mode_batchnorm(kind: BatchNormType, options: dict[str, bool],
                                                            shape: tuple[int, ...]) -> None:
    bn = trained_layer(kind, options, shape)
    frozen = FrozenBatchNorm.from_batchnorm(bn).train()
    x = torch.randn(shape)
    assert torch.equal(frozen(x), bn(x))


@pytest.mark.parametrize(("kind", "options", "shape"), LAYERS)
def test_frozen_batchnorm_state_dicts_load_both_ways_strictly(kind: BatchNormType, options: dict[str, bool],
                                                             shape: tuple[int, ...]) -> None:
    bn = trained_layer(kind, options, shape)
    frozen = FrozenBatchNorm(bn.num_features, affine=bn.affine)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    assert frozen.num_batches_tracked.item() == 3
    fresh = type(bn)(bn.num_features, affine=bn.affine)
    fresh.load_state_dict(frozen.state_dict(), strict=True)
    assert all(torch.equal(value, bn.state_dict()[key]) for key, value in fresh.state_dict().items())


def test_a_checkpoint_without_the_batch_counter_still_loads() -> None:
    old = {key: value for key, value in nn.BatchNorm2d(4).state_dict().items() if key != "num_batches_tracked"}
    frozen = FrozenBatchNorm(4)
    frozen.load_state_dict(old, strict=True)
    assert frozen.num_batches_tracked.item() == 0


def test_a_whole_model_state_dict_loads_into_its_frozen_version_and_back() -> None:
    model = seeded(BackboneHead)
    forward_in_train_mode(model)
    frozen = frozen_backbone("frozen")
    assert isinstance(frozen.backbone[1], FrozenBatchNorm)
    frozen.load_state_dict(model.state_dict(), strict=True)
    plain = seeded(BackboneHead, seed=5)
    plain.load_state_dict(frozen.state_dict(), strict=True)
    images, _ = batches(1)[0]
    assert torch.equal(plain.eval()(images), model.eval()(images))


def test_sync_batchnorm_is_frozen_and_restored_as_sync_batchnorm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))
    freeze(model, ["1"])
    assert apply_batchnorm_policy(model, "frozen")[0].type == "SyncBatchNorm"
    assert isinstance(model[1], FrozenBatchNorm)
    unfreeze(model, types=["SyncBatchNorm"])
    assert type(model[1]) is nn.SyncBatchNorm


@pytest.mark.parametrize("policy", ["eval", "frozen", "train"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_training_moves_only_what_is_trainable(policy: str, optimizer: str) -> None:
    model = frozen_backbone(policy)
    groups = param_groups(model, FreezeOptions(lr=0.05, weight_decay=1e-2))
    opt = (torch.optim.SGD(groups, momentum=0.9) if optimizer == "sgd" else torch.optim.AdamW(groups))
    before = snapshot(model)
    train_steps(model, opt, batches(4))
    after = snapshot(model)
    for key in before:
        if key.startswith("head."):
            assert not torch.equal(after[key], before[key]), key
        elif key.rpartition(".")[2] in STATS and policy == "train":
            assert not torch.equal(after[key], before[key]), key
        else:
            assert torch.equal(after[key], before[key]), key


def test_unfreezing_part_of_a_frozen_layer_restores_it_with_the_rest_still_frozen() -> None:
    model = frozen_backbone("frozen")
    change = unfreeze(model, ["backbone.4.weight"])
    assert change.changed == ("backbone.4.weight",) and [s.name for s in change.batchnorm] == ["backbone.4"]
    assert model.backbone[4].weight.requires_grad and not model.backbone[4].bias.requires_grad
    assert isinstance(model.backbone[1], FrozenBatchNorm)
