"""freeze / unfreeze: what patterns, types and a transfer report select, and that freezing really freezes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ckptsurgeon.errors import MappingError
from ckptsurgeon.model.freeze import freeze, unfreeze
from ckptsurgeon.model.groups import param_groups
from ckptsurgeon.options import FreezeOptions
from ckptsurgeon.plan import COPY, INIT, RESIZE, Plan, Step
from ckptsurgeon.report import Report
from finetune_models import BackboneHead, batches, seeded, snapshot
from standins import TinyResNet


def trainable(model: nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def test_setting_requires_grad_on_a_module_freezes_nothing() -> None:
    model = BackboneHead()
    model.backbone.requires_grad = False     # the pitfall: a plain attribute, no parameter sees it
    assert all(param.requires_grad for param in model.backbone.parameters())
    freeze(model, ["backbone"])
    assert not any(param.requires_grad for param in model.backbone.parameters())


@pytest.mark.parametrize("pattern", ["backbone", "backbone.*", r"re:^backbone\."])
def test_a_module_name_glob_or_regex_selects_everything_under_it(pattern: str) -> None:
    model = BackboneHead()
    change = freeze(model, [pattern])
    assert trainable(model) == {"head.weight", "head.bias"}
    assert change.changed == ("backbone.0.weight", "backbone.1.weight", "backbone.1.bias",
                              "backbone.3.weight", "backbone.4.weight", "backbone.4.bias")
    assert change.selections[0].count == 6 and change.unmatched == ()


def test_a_numbered_stage_name_selects_its_blocks_and_not_its_neighbours() -> None:
    model = TinyResNet()
    freeze(model, ["layer2"])
    frozen = {name for name, _ in model.named_parameters()} - trainable(model)
    assert "layer2.0.conv1.weight" in frozen and "layer2.0.downsample.1.bias" in frozen
    assert not any(name.startswith(("layer1.", "conv1", "fc")) for name in frozen)


def test_a_parameter_glob_selects_leaves_across_modules() -> None:
    model = BackboneHead()
    freeze(model, ["*.bias"])
    assert trainable(model) == {"backbone.0.weight", "backbone.1.weight", "backbone.3.weight",
                                "backbone.4.weight", "head.weight"}


@pytest.mark.parametrize("kind", ["BatchNorm2d", nn.BatchNorm2d, "_BatchNorm"])
def test_module_types_by_class_name_or_class(kind: str | type[nn.Module]) -> None:
    model = BackboneHead()
    change = freeze(model, types=[kind])
    assert change.changed == ("backbone.1.weight", "backbone.1.bias", "backbone.4.weight", "backbone.4.bias")
    assert change.selections[0].rule in ("BatchNorm2d", "_BatchNorm")


def test_a_rule_selecting_nothing_is_reported_not_raised() -> None:
    model = BackboneHead()
    change = freeze(model, ["backbone", "bakcbone"], types=["LayerNorm"])
    assert change.unmatched == ("bakcbone", "LayerNorm")
    assert change.as_dict()["unmatched"] == ["bakcbone", "LayerNorm"]


def test_freezing_twice_changes_nothing_the_second_time() -> None:
    model = BackboneHead()
    first = freeze(model, ["head"])
    second = freeze(model, ["head"])
    assert first.changed == ("head.weight", "head.bias") and first.unchanged == ()
    assert second.changed == () and second.unchanged == ("head.weight", "head.bias")


def test_unfreeze_undoes_freeze() -> None:
    model = BackboneHead()
    freeze(model, ["backbone"])
    change = unfreeze(model, ["backbone.4"])
    assert change.action == "unfreeze" and change.changed == ("backbone.4.weight", "backbone.4.bias")
    assert trainable(model) == {"backbone.4.weight", "backbone.4.bias", "head.weight", "head.bias"}


def test_a_bad_regular_expression_names_the_pattern() -> None:
    with pytest.raises(MappingError, match=r"re:\(unclosed"):
        freeze(BackboneHead(), ["re:(unclosed"])


def report_of(steps: list[Step]) -> Report:
    return Report(Plan(tuple(steps), ()), source="old.pt", target="BackboneHead")


def test_a_transfer_report_freezes_what_was_copied_unchanged() -> None:
    model = BackboneHead()
    backbone = model.backbone.named_parameters(prefix="backbone")
    steps = [Step(name, COPY, tuple(p.shape), "float32") for name, p in backbone]
    steps[-1] = steps[-1]._replace(action=INIT)                     # a new tensor: keeps training
    steps += [Step("head.weight", RESIZE, (3, 4), "float32"), Step("head.bias", INIT, (3,), "float32")]
    change = freeze(model, report=report_of(steps))
    assert trainable(model) == {"backbone.4.bias", "head.weight", "head.bias"}
    assert change.selections[0].kind == "transferred" and change.selections[0].count == 5


def test_an_optimizer_built_before_freezing_still_moves_frozen_weights() -> None:
    """SGD's momentum and weight decay move a weight whose gradient is zero (zero_grad(set_to_none=False),
    as AMP and gradient-accumulation loops do); groups built after freezing leave it out."""
    data = batches(3)
    model = seeded(BackboneHead)
    early = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    images, labels = data[0]
    nn.functional.cross_entropy(model(images), labels).backward()
    early.step()
    freeze(model, ["backbone"])
    before = snapshot(model)
    for images, labels in data[1:]:
        early.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(images), labels).backward()
        early.step()
    assert not torch.equal(model.backbone[0].weight, before["backbone.0.weight"])

    model = seeded(BackboneHead)
    freeze(model, ["backbone"])
    ours = torch.optim.SGD(param_groups(model, FreezeOptions(lr=0.1, weight_decay=1e-2)), momentum=0.9)
    before = snapshot(model)
    for images, labels in data:
        ours.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(images), labels).backward()
        ours.step()
    assert torch.equal(model.backbone[0].weight, before["backbone.0.weight"])
    assert not torch.equal(model.head.weight, before["head.weight"])
