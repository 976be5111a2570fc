"""FineTune: the unfreeze schedule keeps the optimizer in step, once per parameter, and resumes bit for bit."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from torch import nn

from ckptsurgeon.errors import OptionError
from ckptsurgeon.model.batchnorm import batchnorm_states
from ckptsurgeon.model.describe import describe_model
from ckptsurgeon.model.schedule import FineTune
from ckptsurgeon.options import FreezeOptions, GroupRule, UnfreezeStage
from finetune_models import BackboneHead, batches, optimizer_names, param_ids, seeded, snapshot, train_steps

BACKBONE = GroupRule("backbone", ("backbone",), lr_scale=0.1)


def schedule(**changes: Any) -> FreezeOptions:
    """Backbone frozen, unfrozen at epoch 2 at a tenth of the lr."""
    base: dict[str, Any] = dict(freeze=("backbone",), unfreeze=(UnfreezeStage(2, ("backbone",)),), lr=0.05,
                                weight_decay=1e-3, groups=(BACKBONE,))
    return FreezeOptions(**{**base, **changes})


def make_optimizer(kind: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, momentum=0.9) if kind == "sgd" else torch.optim.AdamW(groups)


def test_a_stage_adds_its_parameters_once_in_named_groups() -> None:
    model = BackboneHead()
    ft = FineTune(model, schedule())
    assert ft.start().freeze.changed[0] == "backbone.0.weight"
    opt = torch.optim.SGD(ft.param_groups(), momentum=0.9)
    assert optimizer_names(opt) == ["default", "default/no_decay"]
    assert ft.on_epoch_start(0, opt) == [] and ft.on_epoch_start(1, opt) == []
    [change] = ft.on_epoch_start(2, opt)
    assert change.epoch == 2 and change.groups == ("backbone@2", "backbone/no_decay@2")
    assert ft.on_epoch_start(2, opt) == [] and ft.on_epoch_start(3, opt) == []
    assert optimizer_names(opt) == ["default", "default/no_decay", "backbone@2", "backbone/no_decay@2"]
    assert sorted(param_ids(opt)) == sorted(id(p) for p in model.parameters())
    assert opt.param_groups[2]["lr"] == pytest.approx(0.005) and opt.param_groups[3]["weight_decay"] == 0.0


def test_a_skipped_epoch_still_applies_its_stage_once() -> None:
    model = BackboneHead()
    ft = FineTune(model, schedule(unfreeze=(UnfreezeStage(2, ("backbone.3", "backbone.4")),
                                            UnfreezeStage(4, ("backbone",)))))
    opt = torch.optim.SGD(ft.param_groups())
    changes = ft.on_epoch_start(9, opt)
    assert [c.epoch for c in changes] == [2, 4]
    assert changes[0].freeze.changed == ("backbone.3.weight", "backbone.4.weight", "backbone.4.bias")
    assert changes[1].freeze.changed == ("backbone.0.weight", "backbone.1.weight", "backbone.1.bias")
    ids = param_ids(opt)
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_a_parameter_already_in_the_optimizer_never_joins_twice() -> None:
    model = BackboneHead()
    ft = FineTune(model, schedule())
    ft.start()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)     # the user's own: frozen ones included
    assert ft.on_epoch_start(2, opt)[0].groups == ()
    assert len(opt.param_groups) == 1 and len(param_ids(opt)) == 8


def test_two_stages_of_one_epoch_get_distinct_group_names() -> None:
    ft = FineTune(BackboneHead(), schedule(unfreeze=(UnfreezeStage(2, ("backbone.0",)),
                                                     UnfreezeStage(2, ("backbone.3",)))))
    opt = torch.optim.SGD(ft.param_groups())
    assert [c.groups for c in ft.on_epoch_start(2, opt)] == [("backbone@2.1",), ("backbone@2.2",)]


def test_a_stage_group_takes_the_named_rule() -> None:
    options = schedule(unfreeze=(UnfreezeStage(1, ("backbone",), group="head"),),
                       groups=(GroupRule("head", ("head",), lr_scale=0.5),))
    ft = FineTune(BackboneHead(), options)
    opt = torch.optim.SGD(ft.param_groups())
    ft.on_epoch_start(1, opt)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [
        ("head", 0.025), ("head/no_decay", 0.025), ("head@1", 0.025), ("head/no_decay@1", 0.025)]


def run(model: nn.Module, ft: FineTune, opt: torch.optim.Optimizer, epochs: range) -> None:
    for epoch in epochs:
        ft.on_epoch_start(epoch, opt)
        train_steps(model, opt, batches(2, seed=100 + epoch))


def save(model: nn.Module, opt: torch.optim.Optimizer, ft: FineTune) -> dict[str, Any]:
    return {"model": snapshot(model), "optimizer": copy.deepcopy(opt.state_dict()),
            "finetune": json.loads(json.dumps(ft.state_dict()))}


RESUMABLE = [("requires_grad", "eval"), ("requires_grad", "frozen"), ("requires_grad", "train"),
             ("lr_zero", "eval"), ("lr_zero", "train")]


@pytest.mark.parametrize(("mode", "policy"), RESUMABLE)
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_resuming_after_an_unfreeze_continues_bit_for_bit(mode: str, policy: str, kind: str) -> None:
    options = schedule(mode=mode, batchnorm=policy)
    model = seeded(BackboneHead)
    ft = FineTune(model, options)
    ft.start()
    opt = make_optimizer(kind, ft.param_groups())
    run(model, ft, opt, range(0, 3))
    saved = save(model, opt, ft)
    run(model, ft, opt, range(3, 5))

    fresh = seeded(BackboneHead)
    resumed = FineTune(fresh, options)
    resumed.start()
    resumed.load_state_dict(saved["finetune"])
    opt2 = make_optimizer(kind, resumed.param_groups())
    fresh.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["optimizer"])
    assert optimizer_names(opt2) == saved["finetune"]["groups"]
    run(fresh, resumed, opt2, range(3, 5))
    expected = snapshot(model)
    assert not torch.equal(expected["backbone.0.weight"], saved["model"]["backbone.0.weight"])   # it trains
    assert all(torch.equal(value, expected[key]) for key, value in snapshot(fresh).items())
    assert all(p.requires_grad == q.requires_grad for p, q in zip(model.parameters(), fresh.parameters()))


def test_resuming_without_the_finetune_state_is_the_classic_group_count_error() -> None:
    model = BackboneHead()
    ft = FineTune(model, schedule())
    opt = torch.optim.SGD(ft.param_groups(), momentum=0.9)
    run(model, ft, opt, range(0, 3))
    naive = FineTune(BackboneHead(), schedule())
    opt2 = torch.optim.SGD(naive.param_groups(), momentum=0.9)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt2.load_state_dict(opt.state_dict())


def test_loading_a_state_never_freezes_again() -> None:
    model = BackboneHead()
    early = FineTune(BackboneHead(), schedule())
    early.start()
    ft = FineTune(model, schedule())
    opt = torch.optim.SGD(ft.param_groups())
    ft.on_epoch_start(2, opt)
    with pytest.raises(OptionError, match="epoch 2 already ran here.*fresh FineTune"):
        ft.load_state_dict(early.state_dict())
    assert all(p.requires_grad for p in model.parameters())


def test_a_state_from_another_schedule_is_refused() -> None:
    saved = FineTune(BackboneHead(), schedule()).state_dict()
    other = FineTune(BackboneHead(), schedule(unfreeze=(UnfreezeStage(3, ("backbone",)),)))
    with pytest.raises(OptionError, match="resume with the options the run started with"):
        other.load_state_dict(saved)
    with pytest.raises(OptionError, match="not a FineTune state"):
        other.load_state_dict({"stages": []})


def test_the_state_is_small_and_json() -> None:
    ft = FineTune(BackboneHead(), schedule())
    ft.on_epoch_start(2, torch.optim.SGD(ft.param_groups()))
    assert json.loads(json.dumps(ft.state_dict())) == {
        "format": "ckptsurgeon.finetune/1", "mode": "requires_grad",
        "stages": [{"epoch": 2, "patterns": ["backbone"], "group": None, "applied": True}],
        "groups": ["default", "default/no_decay", "backbone@2", "backbone/no_decay@2"]}


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_lr_zero_keeps_requires_grad_and_moves_nothing_until_the_stage(kind: str) -> None:
    model = seeded(BackboneHead)
    ft = FineTune(model, schedule(mode="lr_zero"))
    ft.start()
    opt = make_optimizer(kind, ft.param_groups())
    assert all(p.requires_grad for p in model.parameters())
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("default", 0.05, 1e-3), ("default/no_decay", 0.05, 0.0), ("backbone@2", 0.0, 0.0),
        ("backbone/no_decay@2", 0.0, 0.0)]
    before = snapshot(model)
    run(model, ft, opt, range(0, 2))
    after = snapshot(model)
    assert all(torch.equal(after[key], before[key]) for key in before if key.startswith("backbone."))
    assert not torch.equal(after["head.weight"], before["head.weight"])
    [change] = ft.on_epoch_start(2, opt)
    assert change.groups == ("backbone@2", "backbone/no_decay@2")
    assert [(g["lr"], g["lr_scale"]) for g in opt.param_groups[2:]] == [(pytest.approx(0.005), 0.1)] * 2
    run(model, ft, opt, range(2, 3))
    assert not torch.equal(snapshot(model)["backbone.0.weight"], before["backbone.0.weight"])
    assert not torch.equal(snapshot(model)["backbone.1.running_mean"], before["backbone.1.running_mean"])


def test_lr_zero_never_unfrozen_parameters_sit_in_frozen_groups() -> None:
    ft = FineTune(BackboneHead(), schedule(mode="lr_zero", unfreeze=(UnfreezeStage(2, ("backbone.3", "backbone.4")),)))
    names = [g["name"] for g in ft.param_groups()]
    assert names == ["default", "default/no_decay", "backbone@2", "backbone/no_decay@2",
                     "frozen/backbone", "frozen/backbone/no_decay"]


def test_lr_zero_refuses_to_unfreeze_a_swapped_batchnorm() -> None:
    ft = FineTune(BackboneHead(), schedule(mode="lr_zero", batchnorm="frozen"))
    with pytest.raises(OptionError, match="FrozenBatchNorm 'backbone.1'.*batchnorm='eval'"):
        ft.start()


def test_lr_zero_needs_the_optimizer_built_from_its_groups() -> None:
    model = BackboneHead()
    ft = FineTune(model, schedule(mode="lr_zero"))
    ft.start()
    with pytest.raises(OptionError, match="no group 'backbone@2'.*FineTune.param_groups"):
        ft.on_epoch_start(2, torch.optim.SGD(model.parameters(), lr=0.1))


def test_freezing_what_was_transferred_needs_the_report() -> None:
    with pytest.raises(OptionError, match="report=report"):
        FineTune(BackboneHead(), FreezeOptions(freeze_transferred=True))


def test_describe_follows_the_schedule() -> None:
    model = BackboneHead()
    ft = FineTune(model, schedule(batchnorm="frozen"))
    opt = torch.optim.SGD(ft.param_groups())
    state = describe_model(model, finetune=ft)
    assert [(m.module, m.trainable, m.frozen) for m in state.modules] == [("backbone", 0, 6), ("head", 2, 0)]
    assert [b.mode for b in state.batchnorm] == ["frozen", "frozen"]
    ft.on_epoch_start(2, opt)
    state = describe_model(model, finetune=ft)
    assert [(m.module, m.trainable, m.frozen) for m in state.modules] == [("backbone", 6, 0), ("head", 2, 0)]
    assert [g.name for g in state.groups] == optimizer_names(opt)
    assert [b.mode for b in batchnorm_states(model)] == ["train", "train"]


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_lr_zero_trains_as_requires_grad_mode_does(kind: str) -> None:
    """Same groups in the same order, the unfrozen ones starting with a fresh optimizer state in both."""
    finals = []
    for mode in ("requires_grad", "lr_zero"):
        model = seeded(BackboneHead)
        ft = FineTune(model, schedule(mode=mode))
        ft.start()
        opt = make_optimizer(kind, ft.param_groups())
        run(model, ft, opt, range(0, 4))
        finals.append(snapshot(model))
    assert all(torch.equal(value, finals[1][key]) for key, value in finals[0].items())
