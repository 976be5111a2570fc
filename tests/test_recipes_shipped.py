"""The five recipes in recipes/, each run end to end on a small stand-in with the real module names:
``transfer --recipe`` through the CLI (values, report, counts), then the fine-tuning half (``FineTune`` and
``freeze --recipe``), and ``recipe check`` on its model."""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from ckptsurgeon import FineTune, load_recipe, transfer
from ckptsurgeon.apply import step_generator
from ckptsurgeon.cli import _register, cli
from ckptsurgeon.examples.resnet import ResNet
from ckptsurgeon.init import initialize
from ckptsurgeon.recipe import Recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SEED = 0   # the recipes set no [match] seed, so the initialisers use the default


@dataclass(frozen=True)
class Case:
    """One shipped recipe and the stand-in migration it is written for."""

    recipe: str
    model: str                                   # MODULE:CALLABLE, as given to --model
    source_kwargs: dict[str, Any]
    target_kwargs: dict[str, Any]
    source_file: str = "source.pth"

    @property
    def path(self) -> Path:
        return RECIPES / self.recipe


YOLO = "ckptsurgeon.examples.yolov7:build_yolov7"
SE_HEAD = Case("yolov7-se-head.toml", YOLO, {"num_classes": 80, "width": 8},
               {"num_classes": 80, "width": 8, "head_attention": "se"}, "yolov7_weights.pth")
NUM_CLASSES = Case("yolov7-num-classes.toml", YOLO, {"num_classes": 80, "width": 8},
                   {"num_classes": 20, "width": 8}, "yolov7_weights.pth")
RESNET = Case("resnet50-finetune.toml", "ckptsurgeon.examples.resnet:build", {"num_classes": 1000},
              {"num_classes": 100}, "resnet50.pth")
DETECTOR = Case("backbone-into-detector.toml", "ckptsurgeon.examples.detector:build", {"num_classes": 1000},
                {"num_classes": 2}, "resnet50.pth")
VIT = Case("vit-image-size.toml", "ckptsurgeon.examples.vit:build", {"img_size": 224, "num_classes": 1000},
           {"img_size": 384, "num_classes": 100}, "vit_224.pth")
CASES = {case.recipe: case for case in (SE_HEAD, NUM_CLASSES, RESNET, DETECTOR, VIT)}
SOURCE_BUILDERS = {DETECTOR.recipe: "ckptsurgeon.examples.resnet:build"}   # a classifier goes into the detector


def build(spec: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    module, _, name = spec.partition(":")
    model: torch.nn.Module = getattr(importlib.import_module(module), name)(**kwargs)
    return model


def invoke(*args: str | Path) -> Result:
    _register()
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def counted(keys: Any) -> list[str]:
    """Keys as the report counts them: without ``num_batches_tracked``."""
    return [key for key in keys if not key.endswith("num_batches_tracked")]


@dataclass
class Transferred:
    source: dict[str, torch.Tensor]
    target_keys: dict[str, tuple[int, ...]]      # the freshly built target model's keys and shapes
    out: dict[str, torch.Tensor]
    report: dict[str, Any]

    def step(self, key: str) -> dict[str, Any]:
        return next(step for step in self.report["targets"] if step["target"] == key)


def run_transfer(case: Case, tmp_path: Path) -> Transferred:
    """Save the stand-in source (fixed seed), run ``transfer --recipe`` into the target model via the CLI."""
    torch.manual_seed(0)
    source = build(SOURCE_BUILDERS.get(case.recipe, case.model), case.source_kwargs).state_dict()
    source_path, out, report = tmp_path / case.source_file, tmp_path / "out.safetensors", tmp_path / "report.json"
    torch.save(source, source_path)
    result = invoke("transfer", source_path, "--model", case.model, "--model-kwargs", json.dumps(case.target_kwargs),
                    "--recipe", case.path, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    target = {k: tuple(v.shape) for k, v in build(case.model, case.target_kwargs).state_dict().items()}
    return Transferred(source, target, load_file(str(out)), json.loads(report.read_text()))


def expected_init(text: str, key: str, like: torch.Tensor) -> torch.Tensor:
    """What initialiser ``text`` gives key ``key`` (values depend only on the seed and the key's name)."""
    return initialize(text, like, step_generator(SEED, key))


def assert_recipe_recorded(case: Case, report: dict[str, Any]) -> None:
    assert report["recipe"] == {"path": str(case.path), "sha256": hashlib.sha256(case.path.read_bytes()).hexdigest()}
    assert report["applied"] is True
    assert report["gate_failures"] == []


def assert_counts(report: dict[str, Any], *, targets: Any, loaded: int, resized: int, new: int,
                  unused: int, sources: Any) -> None:
    counts = report["counts"]
    assert (counts["targets"], counts["loaded"], counts["resized"], counts["new"]) == (
        len(counted(targets)), loaded, resized, new)
    assert (counts["unused_sources"], counts["sources"]) == (unused, len(counted(sources)))
    assert loaded + resized + new == counts["targets"]


# --- transfer ------------------------------------------------------------------------------------


def test_yolov7_se_head_transfer(tmp_path: Path) -> None:
    run = run_transfer(SE_HEAD, tmp_path)
    se_keys = [key for key in run.target_keys if key not in run.source]
    assert se_keys and all(key.startswith(("feat1_att.", "feat2_att.", "feat3_att.")) for key in se_keys)
    assert set(run.out) == set(run.target_keys)
    for key, tensor in run.source.items():                 # every checkpoint tensor, under its own name
        assert torch.equal(run.out[key], tensor), key
    for key in se_keys:
        if key.endswith("fc.2.weight"):                    # excitation: every gate opens at sigmoid(0)
            assert torch.count_nonzero(run.out[key]) == 0, key
            assert run.step(key)["method"] == "zeros"
        else:                                              # squeeze: kaiming, seeded by the key's name
            assert torch.equal(run.out[key], expected_init("kaiming", key, run.out[key])), key
            assert run.out[key].std() > 0
            assert run.step(key)["method"] == "kaiming"
    assert_recipe_recorded(SE_HEAD, run.report)
    assert_counts(run.report, targets=run.target_keys, loaded=len(counted(run.source)), resized=0,
                  new=len(se_keys), unused=0, sources=run.source)


@pytest.mark.parametrize("num_classes", [20, 90])
def test_yolov7_num_classes_transfer(tmp_path: Path, num_classes: int) -> None:
    case = Case(NUM_CLASSES.recipe, NUM_CLASSES.model, NUM_CLASSES.source_kwargs,
                {**NUM_CLASSES.target_kwargs, "num_classes": num_classes}, NUM_CLASSES.source_file)
    run = run_transfer(case, tmp_path)
    heads = [key for key in run.target_keys if key.startswith("yolo_head_P")]
    assert len(heads) == 6 and set(run.target_keys) == set(run.source)
    keep = 5 + min(80, num_classes)
    for key, tensor in run.source.items():
        if key in heads:   # per anchor: box, objectness and the shared classes' rows
            out = run.out[key].view(3, 5 + num_classes, *tensor.shape[1:])
            assert torch.equal(out[:, :keep], tensor.view(3, 85, *tensor.shape[1:])[:, :keep]), key
            assert run.step(key)["method"] == "yolo_head:3"
        else:
            assert torch.equal(run.out[key], tensor), key
    assert_recipe_recorded(case, run.report)
    assert_counts(run.report, targets=run.target_keys, loaded=len(counted(run.source)) - 6, resized=6, new=0,
                  unused=0, sources=run.source)


def test_resnet50_finetune_transfer(tmp_path: Path) -> None:
    run = run_transfer(RESNET, tmp_path)
    assert set(run.target_keys) == set(run.source)
    assert run.out["fc.weight"].shape == (100, run.source["fc.weight"].shape[1])
    for key, tensor in run.source.items():
        if not key.startswith("fc."):
            assert torch.equal(run.out[key], tensor), key
    assert torch.equal(run.out["fc.weight"], expected_init("normal:0.01", "fc.weight", run.out["fc.weight"]))
    assert abs(run.out["fc.weight"].std().item() - 0.01) < 0.002
    assert torch.count_nonzero(run.out["fc.bias"]) == 0
    assert {u["source"]: u["reason"] for u in run.report["unused"]} == {"fc.weight": "shape mismatch",
                                                                        "fc.bias": "shape mismatch"}
    assert_recipe_recorded(RESNET, run.report)
    assert_counts(run.report, targets=run.target_keys, loaded=len(counted(run.source)) - 2, resized=0, new=2,
                  unused=2, sources=run.source)


def test_backbone_into_detector_transfer(tmp_path: Path) -> None:
    run = run_transfer(DETECTOR, tmp_path)
    body = {key: tensor for key, tensor in run.source.items() if not key.startswith("fc.")}
    for key, tensor in body.items():
        assert torch.equal(run.out[f"backbone.body.{key}"], tensor), key
        assert run.step(f"backbone.body.{key}")["sources"] == [{"input": 0, "key": key}]
    new = [key for key in run.target_keys if not key.startswith("backbone.body.")]
    assert new and all(key.startswith(("backbone.fpn.", "head.")) for key in new)
    assert not any(".fc." in key or key.startswith("fc.") for key in run.out)
    assert {u["source"] for u in run.report["unused"]} == {"fc.weight", "fc.bias"}
    assert_recipe_recorded(DETECTOR, run.report)
    assert_counts(run.report, targets=run.target_keys, loaded=len(counted(body)), resized=0, new=len(new),
                  unused=2, sources=run.source)


def test_vit_image_size_transfer(tmp_path: Path) -> None:
    run = run_transfer(VIT, tmp_path)
    src, out = run.source["pos_embed"], run.out["pos_embed"]
    dim = src.shape[-1]
    assert src.shape == (1, 1 + 14 * 14, dim) and out.shape == (1, 1 + 24 * 24, dim)
    assert torch.equal(out[:, :1], src[:, :1])             # the class token's embedding, kept
    grid = src[:, 1:].reshape(1, 14, 14, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], grid.permute(0, 2, 3, 1).reshape(1, 576, dim))
    for key, tensor in run.source.items():
        if key != "pos_embed" and not key.startswith("head."):
            assert torch.equal(run.out[key], tensor), key
    assert run.out["head.weight"].shape == (100, dim)
    assert torch.equal(run.out["head.weight"], expected_init("normal:0.02", "head.weight", run.out["head.weight"]))
    assert torch.count_nonzero(run.out["head.bias"]) == 0
    assert run.step("pos_embed")["method"] == "pos_embed:1"
    assert_recipe_recorded(VIT, run.report)
    assert_counts(run.report, targets=run.target_keys, loaded=len(run.source) - 3, resized=1, new=2, unused=2,
                  sources=run.source)


# --- the stand-ins are the real architectures at small widths ---------------------------------------------


def test_resnet_standin_at_full_width_is_torchvision_resnet50() -> None:
    with torch.device("meta"):
        model = build(RESNET.model, {"num_classes": 1000, "width": 64})
    state = model.state_dict()
    assert len(state) == 320   # torchvision resnet50: 161 parameters, 53 BatchNorms x 3 buffers
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    assert state["fc.weight"].shape == (1000, 2048) and state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_vit_standin_at_full_width_is_timm_vit_base_patch16_224() -> None:
    from ckptsurgeon.examples.vit import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(224, 16, 1000, embed_dim=768, depth=12, num_heads=12)
    assert len(model.state_dict()) == 152
    assert sum(p.numel() for p in model.parameters()) == 86_567_656
    assert model.pos_embed.shape == (1, 197, 768)


def test_detector_holds_the_classifier_under_backbone_body() -> None:
    classifier = counted(build(RESNET.model, {}).state_dict())
    detector = counted(build(DETECTOR.model, {}).state_dict())
    body = [key.removeprefix("backbone.body.") for key in detector if key.startswith("backbone.body.")]
    assert body == [key for key in classifier if not key.startswith("fc.")]   # same names, same order
    assert all(key.startswith(("backbone.body.", "backbone.fpn.", "head.")) for key in detector)


# --- recipe check --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_recipe_check_is_clean_on_its_standin(case: Case, tmp_path: Path) -> None:
    """Every pattern of a shipped recipe selects something in its model, and with --source in its checkpoint."""
    source = tmp_path / case.source_file
    torch.save(build(SOURCE_BUILDERS.get(case.recipe, case.model), case.source_kwargs).state_dict(), source)
    result = invoke("recipe", "check", case.path, "--model", case.model, "--model-kwargs",
                    json.dumps(case.target_kwargs), "--source", source, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    checked = json.loads(result.stdout)
    assert checked["warnings"] == []
    assert checked["recipe"]["sha256"] == hashlib.sha256(case.path.read_bytes()).hexdigest()
    assert all(use["selected"] for use in checked["patterns"]), checked["patterns"]


# --- fine-tuning: FineTune with the recipe's freeze options on the transferred model ----------------------


@dataclass
class Tuned:
    model: torch.nn.Module
    recipe: Recipe
    finetune: FineTune
    source_path: Path


def tuned(case: Case, tmp_path: Path) -> Tuned:
    """The library path of a training script: load_recipe, transfer(recipe=), FineTune(...).start()."""
    torch.manual_seed(0)
    source_path = tmp_path / case.source_file
    torch.save(build(SOURCE_BUILDERS.get(case.recipe, case.model), case.source_kwargs).state_dict(), source_path)
    recipe = load_recipe(case.path)
    model = build(case.model, case.target_kwargs)
    report = transfer(source_path, model, recipe=recipe)
    finetune = FineTune(model, recipe.freeze, report=report)
    finetune.start()
    return Tuned(model, recipe, finetune, source_path)


def names_under(model: torch.nn.Module, *prefixes: str) -> set[str]:
    """Parameter names under any of ``prefixes`` (all of them when none is given)."""
    return {name for name, _ in model.named_parameters() if not prefixes or name.startswith(prefixes)}


def frozen_now(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if not param.requires_grad}


def optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the parameters in ``optimizer``, with repeats if a parameter were in it twice."""
    by_id = {id(param): name for name, param in model.named_parameters()}
    return [by_id[id(param)] for group in optimizer.param_groups for param in group["params"]]


def batchnorms(model: torch.nn.Module, *prefixes: str) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (not prefixes or name.startswith(prefixes))}


def statistics(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {f"{name}.{stat}": getattr(module, stat).clone() for name, module in modules.items()
            for stat in ("running_mean", "running_var")}


def assert_no_decay_on_norms_and_biases(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                                        decay: float) -> None:
    params = dict(model.named_parameters())
    for group in optimizer.param_groups:
        for param in group["params"]:
            name = next(n for n, p in params.items() if p is param)
            one_d = param.dim() <= 1 or name.endswith(".bias")
            assert group["weight_decay"] == (0.0 if one_d else decay), (name, group["name"])


def test_yolov7_se_head_finetune(tmp_path: Path) -> None:
    run = tuned(SE_HEAD, tmp_path)
    model = run.model
    backbone = names_under(model, "backbone.")
    assert frozen_now(model) == backbone
    model.train()
    frozen_bns, head_bns = batchnorms(model, "backbone."), batchnorms(model, "sppcspc.", "conv", "rep_conv")
    before = statistics(frozen_bns)
    model(torch.randn(2, 3, 64, 64))                       # a training step's forward, in model.train()
    assert all(not bn.training for bn in frozen_bns.values())
    assert all(torch.equal(value, statistics(frozen_bns)[key]) for key, value in before.items())
    assert all(bn.training for bn in head_bns.values())   # the neck's BatchNorm trains as usual
    optimizer = torch.optim.SGD(run.finetune.param_groups(), momentum=0.937, nesterov=True)   # groups carry the lr
    assert sorted(optimizer_names(model, optimizer)) == sorted(names_under(model) - backbone)
    assert {group["lr"] for group in optimizer.param_groups} == {0.01}
    assert_no_decay_on_norms_and_biases(model, optimizer, 5e-4)
    for epoch in range(50):                                # Freeze_Epoch = 50 of UnFreeze_Epoch = 300
        assert run.finetune.on_epoch_start(epoch, optimizer) == []
    assert frozen_now(model) == backbone
    [stage] = run.finetune.on_epoch_start(50, optimizer)
    assert stage.epoch == 50 and set(stage.freeze.changed) == backbone
    assert frozen_now(model) == set()
    assert sorted(optimizer_names(model, optimizer)) == sorted(names_under(model))   # each exactly once
    assert {group["lr"] for group in optimizer.param_groups} == {0.01}
    assert_no_decay_on_norms_and_biases(model, optimizer, 5e-4)
    model.train()
    model(torch.randn(2, 3, 64, 64))
    assert all(bn.training for bn in frozen_bns.values())
    assert not torch.equal(next(iter(before.values())), next(iter(statistics(frozen_bns).values())))
    assert run.finetune.on_epoch_start(51, optimizer) == []
    assert [stage["applied"] for stage in run.finetune.state_dict()["stages"]] == [True]


def test_yolov7_num_classes_finetune_trains_everything(tmp_path: Path) -> None:
    run = tuned(NUM_CLASSES, tmp_path)
    assert frozen_now(run.model) == set() and run.recipe.freeze.unfreeze == ()
    optimizer = torch.optim.SGD(run.finetune.param_groups(), momentum=0.937)
    assert sorted(optimizer_names(run.model, optimizer)) == sorted(names_under(run.model))
    assert_no_decay_on_norms_and_biases(run.model, optimizer, 5e-4)


def test_resnet50_finetune_finetune(tmp_path: Path) -> None:
    run = tuned(RESNET, tmp_path)
    model = run.model
    body = names_under(model, "conv1.", "bn1.", "layer")
    assert frozen_now(model) == body and names_under(model) - body == {"fc.weight", "fc.bias"}
    optimizer = torch.optim.SGD(run.finetune.param_groups(), momentum=0.9)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert set(groups) == {"default", "default/no_decay"}
    assert optimizer_names(model, optimizer) == ["fc.weight", "fc.bias"]
    assert groups["default"]["lr"] == 0.01 and groups["default"]["weight_decay"] == 1e-4
    model.train()
    all_bns, stats = batchnorms(model), statistics(batchnorms(model))
    model(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(value, statistics(all_bns)[key]) for key, value in stats.items())
    assert run.finetune.on_epoch_start(9, optimizer) == []
    [stage] = run.finetune.on_epoch_start(10, optimizer)
    layer4 = names_under(model, "layer4.")
    assert set(stage.freeze.changed) == layer4 and frozen_now(model) == body - layer4
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert set(stage.groups) == {"layer4@10", "layer4/no_decay@10"} <= set(groups)
    assert [groups[name]["lr"] for name in stage.groups] == pytest.approx([0.01 * 0.1] * 2)
    assert {groups[name]["lr_scale"] for name in stage.groups} == {0.1}
    assert sorted(optimizer_names(model, optimizer)) == sorted(layer4 | {"fc.weight", "fc.bias"})
    stats = statistics(all_bns)
    model.train()
    model(torch.randn(2, 3, 32, 32))
    changed = {key.rpartition(".")[0] for key, value in stats.items() if not torch.equal(value, statistics(all_bns)[key])}
    assert changed == set(batchnorms(model, "layer4.")) # layer4's BatchNorm trains again, layer1..3's stays


def test_backbone_into_detector_finetune(tmp_path: Path) -> None:
    run = tuned(DETECTOR, tmp_path)
    model = run.model
    body_bns = [name for name, module in model.named_modules()
                if name.startswith("backbone.body.") and type(module).__name__ == "FrozenBatchNorm"]
    assert len(body_bns) == 53 and batchnorms(model) == {}   # every BatchNorm swapped for a frozen one
    assert not any(name.startswith(tuple(body_bns)) for name, _ in model.named_parameters())
    stem = names_under(model, "backbone.body.conv1.", "backbone.body.layer1.")
    assert frozen_now(model) == stem                      # trainable_backbone_layers = 3
    assert names_under(model, "backbone.body.layer2.", "backbone.body.layer3.", "backbone.body.layer4.")
    optimizer = torch.optim.SGD(run.finetune.param_groups(), momentum=0.9)
    assert sorted(optimizer_names(model, optimizer)) == sorted(names_under(model) - stem)
    source = torch.load(run.source_path, weights_only=True)
    state = model.state_dict()                            # the frozen layers keep the checkpoint's keys and values
    for key, tensor in source.items():
        if not key.startswith("fc."):
            assert torch.equal(state[f"backbone.body.{key}"], tensor), key
    reference = ResNet().eval()
    reference.load_state_dict(source)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    for ours, theirs in zip(model.get_submodule("backbone.body")(x), reference.stage_outputs(x)):
        torch.testing.assert_close(ours, theirs)          # train mode, yet the pretrained statistics


def test_vit_image_size_finetune(tmp_path: Path) -> None:
    run = tuned(VIT, tmp_path)
    model = run.model
    assert frozen_now(model) == set()
    optimizer = torch.optim.AdamW(run.finetune.param_groups(), betas=(0.9, 0.999))
    assert sorted(optimizer_names(model, optimizer)) == sorted(names_under(model))
    depth = len({name.split(".")[1] for name in names_under(model, "blocks.")})
    by_id = {id(param): name for name, param in model.named_parameters()}
    lr_of = {by_id[id(param)]: group for group in optimizer.param_groups for param in group["params"]}
    for name, param in model.named_parameters():
        if name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        elif name.startswith(("norm.", "head.")):
            layer = depth + 1
        else:                                             # cls_token, pos_embed, patch_embed
            layer = 0
        assert lr_of[name]["lr"] == pytest.approx(5e-4 * 0.75 ** (depth + 1 - layer)), name
        no_decay = param.dim() <= 1 or name in ("cls_token", "pos_embed")
        assert lr_of[name]["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert lr_of["head.weight"]["lr"] == pytest.approx(5e-4)


# --- freeze --recipe: the CLI's view agrees with the library's ------------------------------------------


def expected_frozen(recipe: str, names: set[str], bn_names: set[str], epoch: int) -> set[str]:
    """What each recipe says is frozen at the start of ``epoch`` (parameter names of the fresh target model)."""
    if recipe == SE_HEAD.recipe:
        return {n for n in names if n.startswith("backbone.")} if epoch < 50 else set()
    if recipe == RESNET.recipe:
        return {n for n in names if not n.startswith("fc.") and (epoch < 10 or not n.startswith("layer4."))}
    if recipe == DETECTOR.recipe:
        stem = ("backbone.body.conv1.", "backbone.body.bn1.", "backbone.body.layer1.")
        return {n for n in names if n.startswith(stem) or n.rpartition(".")[0] in bn_names}
    return set()


def expected_bn_modes(recipe: str, bn_names: set[str], epoch: int) -> dict[str, str]:
    if recipe == SE_HEAD.recipe and epoch < 50:
        return {n: "eval" if n.startswith("backbone.") else "train" for n in bn_names}
    if recipe == RESNET.recipe:
        return {n: "train" if epoch >= 10 and n.startswith("layer4.") else "eval" for n in bn_names}
    if recipe == DETECTOR.recipe:
        return {n: "frozen" for n in bn_names}
    return {n: "train" for n in bn_names}


@pytest.mark.parametrize(("case", "epoch"), [(SE_HEAD, 0), (SE_HEAD, 49), (SE_HEAD, 50), (NUM_CLASSES, 0),
                                             (RESNET, 9), (RESNET, 10), (DETECTOR, 0), (VIT, 0)],
                         ids=lambda value: value.recipe.removesuffix(".toml") if isinstance(value, Case) else str(value))
def test_freeze_cli_agrees_with_the_recipe_and_the_library(case: Case, epoch: int) -> None:
    result = invoke("freeze", "--model", case.model, "--model-kwargs", json.dumps(case.target_kwargs),
                    "--recipe", case.path, "--epoch", str(epoch), "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""                            # no freeze pattern selects nothing
    shown = json.loads(result.stdout)
    assert shown["recipe"]["path"] == str(case.path) and shown["epoch"] == epoch
    model = build(case.model, case.target_kwargs)
    names = names_under(model)
    bn_names = set(batchnorms(model))
    frozen = expected_frozen(case.recipe, names, bn_names, epoch)
    assert sum(row["frozen"] for row in shown["modules"]) == len(frozen)
    assert sum(row["trainable"] for row in shown["modules"]) == len(names) - len(frozen)
    for row in shown["modules"]:
        assert row["frozen"] == len({n for n in frozen if n.split(".")[0] == row["module"]}), row
    assert {layer["name"]: layer["mode"] for layer in shown["batchnorm"]} == expected_bn_modes(case.recipe, bn_names,
                                                                                               epoch)
    finetune = FineTune(model, load_recipe(case.path).freeze)   # the library, on the same model at the same epoch
    finetune.start()
    finetune.on_epoch_start(epoch, None)
    library = [(g["name"], len(g["params"]), g["lr"], g["weight_decay"]) for g in finetune.param_groups()]
    assert [(g["name"], g["count"], g["lr"], g["weight_decay"]) for g in shown["groups"]] == library
    assert sum(count for _, count, _, _ in library) == len(names) - len(frozen)
