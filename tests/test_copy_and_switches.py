"""--copy (one source sub-tree into several target sub-trees) and matching passes switched off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

import ckptsurgeon as cs
import ckptsurgeon.cli.transfer_cmd  # noqa: F401  (registers the command)
from ckptsurgeon.cli import cli
from ckptsurgeon.plan import ALIGN, COPY_RULE, MOVE, PREFIX, REGROUP, SIGNATURE
from ckptsurgeon.specs import specs_of


def backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.head = nn.Linear(8, 5)


class TwoStream(nn.Module):
    """RGB and depth streams, each a copy of the pretrained backbone, and a fused head."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb = nn.Module()
        self.rgb.backbone = backbone()
        self.depth = nn.Module()
        self.depth.backbone = backbone()
        self.head = nn.Linear(8, 5)


@pytest.fixture
def classifier() -> Classifier:
    torch.manual_seed(0)
    model = Classifier()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):   # statistics that differ from a fresh layer's
            module.running_mean.uniform_()
            module.num_batches_tracked.fill_(7)
    return model


def test_one_backbone_feeds_both_streams_and_counts_once(classifier: Classifier) -> None:
    target = TwoStream()
    report = cs.transfer(classifier.state_dict(), target,
                         copy=["backbone.=rgb.backbone.", "backbone.=depth.backbone."])
    source = classifier.state_dict()
    for stream in ("rgb", "depth"):
        for name, value in getattr(target, stream).backbone.state_dict().items():
            assert torch.equal(value, source[f"backbone.{name}"]), (stream, name)
    assert torch.equal(target.head.weight, classifier.head.weight)
    counts = report.counts()
    assert counts.new == 0 and counts.unused_sources == 0
    assert counts.sources == len([k for k in source if not k.endswith("num_batches_tracked")])
    fed = {s.target: s.source for s in report.plan.steps if s.strategy == COPY_RULE}
    assert fed["rgb.backbone.0.weight"] == fed["depth.backbone.0.weight"] == "backbone.0.weight"
    assert len(fed) == 2 * len(classifier.backbone.state_dict())


def test_copy_from_the_cli_lists_every_target_fed(tmp_path: Path, classifier: Classifier) -> None:
    src, tpl, out = tmp_path / "c.pt", tmp_path / "two.safetensors", tmp_path / "out.safetensors"
    torch.save(classifier.state_dict(), src)
    cs.write_state_dict(tpl, TwoStream().state_dict())
    result = CliRunner().invoke(cli, ["transfer", str(src), "--target", str(tpl), "-o", str(out),
                                      "--copy", "backbone.=rgb.backbone.", "--copy", "backbone.=depth.backbone.",
                                      "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "copy-rule" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    targets = {t["target"]: t for t in data["targets"]}
    assert targets["depth.backbone.3.weight"]["sources"] == [{"input": 0, "key": "backbone.3.weight"}]
    assert targets["rgb.backbone.3.weight"]["sources"] == [{"input": 0, "key": "backbone.3.weight"}]
    assert data["counts"]["unused_sources"] == 0 and data["unused"] == []
    written = load_file(out)
    assert torch.equal(written["depth.backbone.1.running_mean"], classifier.backbone[1].running_mean)


def test_a_copy_that_feeds_nothing_or_clashes_with_a_rename_is_refused(classifier: Classifier) -> None:
    with pytest.raises(cs.MappingError, match="no source key under 'backbone.' has a target under 'rbg.backbone.'"):
        cs.transfer(classifier.state_dict(), TwoStream(), copy=["backbone.=rbg.backbone."], dry_run=True)
    with pytest.raises(cs.MappingError, match="fed by a --rename rule .* and a --copy rule"):
        cs.transfer(classifier.state_dict(), TwoStream(), copy=["backbone.=rgb.backbone."],
                    rename=[r"^backbone\.=rgb.backbone."], dry_run=True)


def test_rename_and_copy_together_feed_two_streams(classifier: Classifier) -> None:
    target = TwoStream()
    report = cs.transfer(classifier.state_dict(), target, rename=[r"^backbone\.=rgb.backbone."],
                         copy=["backbone.=depth.backbone."])
    assert report.counts().new == 0
    assert torch.equal(target.rgb.backbone[3].weight, target.depth.backbone[3].weight)


def _specs(model: nn.Module) -> dict[str, cs.TensorSpec]:
    return specs_of(model.state_dict())


def _inserted() -> tuple[nn.Module, nn.Module]:
    source = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 8), nn.Linear(8, 8))
    target = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4, bias=False), nn.Linear(4, 8), nn.Linear(8, 8))
    return source, target


def _renamed_sibling() -> tuple[nn.Module, nn.Module]:
    source, target = nn.Module(), nn.Module()
    source.body, target.body = nn.Module(), nn.Module()
    source.body.proj, target.body.projection = nn.Linear(3, 5), nn.Linear(3, 5)
    source.body.norm, target.body.norm = nn.LayerNorm(5), nn.LayerNorm(5)
    return source, target


def _wrapped() -> tuple[nn.Module, nn.Module]:
    source = Classifier()
    target = nn.Module()
    target.model = Classifier()
    return source, target


def _moved() -> tuple[nn.Module, nn.Module]:
    source, target = nn.Module(), nn.Module()
    source.a, source.b, source.c = nn.Linear(3, 4), nn.Linear(4, 6), nn.Linear(6, 7)
    target.x, target.y = nn.Module(), nn.Module()
    target.x.a, target.y.b, target.c = nn.Linear(3, 4), nn.Linear(4, 6), nn.Linear(6, 7)
    return source, target


def _regrouped() -> tuple[nn.Module, nn.Module]:
    source, target = nn.Sequential(nn.Module(), nn.Linear(2, 2)), nn.Sequential(nn.Module(), nn.Linear(2, 2))
    source[0].conv, source[0].bn, source[0].out = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Linear(6, 2)
    source[0].extra = nn.Linear(2, 9)
    target[0].unit = nn.Module()
    target[0].unit.conv, target[0].unit.bn, target[0].out = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Linear(6, 2)
    target[0].other = nn.Linear(2, 9)
    return source, target


@pytest.mark.parametrize("switch, strategy, models, backed_up_by", [
    ("align", ALIGN, _inserted, ()), ("signature", SIGNATURE, _renamed_sibling, (REGROUP, MOVE)),
    ("prefix", PREFIX, _wrapped, (MOVE,)), ("move", MOVE, _moved, ()), ("regroup", REGROUP, _regrouped, (MOVE,))])
def test_a_switched_off_pass_pairs_nothing(switch: str, strategy: str, models: Callable[[], tuple[nn.Module, nn.Module]],
                                           backed_up_by: tuple[str, ...]) -> None:
    """Passes back each other up (a renamed sibling is also a regrouped leaf); where none does, less loads."""
    source, target = models()
    on = cs.make_plan(_specs(source), _specs(target))
    off = cs.make_plan(_specs(source), _specs(target), disable=[switch])
    assert any(step.strategy == strategy for step in on.steps)
    assert not any(step.strategy == strategy for step in off.steps)
    assert off.options.disable == (switch,)
    loaded_on, loaded_off = (sum(s.is_transferred for s in plan.steps) for plan in (on, off))
    if not backed_up_by:
        assert loaded_off < loaded_on
    else:
        assert loaded_off == loaded_on and any(step.strategy == backed_up_by[0] for step in off.steps)
        none_left = cs.make_plan(_specs(source), _specs(target), disable=[switch, *backed_up_by])
        assert sum(s.is_transferred for s in none_left.steps) < loaded_on


def test_disable_on_the_cli_and_a_bad_name(tmp_path: Path) -> None:
    source, target = _inserted()
    src, tpl = tmp_path / "s.safetensors", tmp_path / "t.safetensors"
    cs.write_state_dict(src, source.state_dict())
    cs.write_state_dict(tpl, target.state_dict())
    result = CliRunner().invoke(cli, ["transfer", str(src), "--target", str(tpl), "--dry-run", "--disable", "align"])
    assert result.exit_code == 0, result.output
    assert "align:" not in result.output and "new (initialised) (4)" in result.output
    result = CliRunner().invoke(cli, ["transfer", str(src), "--target", str(tpl), "--dry-run", "--disable", "exact"])
    assert result.exit_code == 2 and "exact" in result.output
    with pytest.raises(cs.OptionError, match="cannot switch off matching pass 'exact'"):
        cs.PlanOptions(disable=("exact",))
