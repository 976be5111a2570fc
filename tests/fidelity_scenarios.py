"""Transfer-fidelity scenarios: real module naming, edits people make, ground truth from how the edit was made.

A scenario builds its source model, then builds the target by editing a *fresh source model in place* (children
inserted, removed, moved under new parents, replaced). A target tensor that is still the very tensor of that
fresh source model (same storage) truly comes from the source key that tensor had; every other target tensor
is new. So the ground truth is read off the edit itself, never written by hand.

A scenario is undecidable where another edit (``alternatives``) yields the same target names and shapes: the
target keys whose true source differs between the readings are the undecidable keys (counted as ambiguous,
neither wrong nor missed, and the report must list an ambiguity).

Scoring is by value: every floating source tensor is filled with a constant unique to it, the checkpoint is
saved and transferred with the public ``ckptsurgeon.transfer``, and each target tensor is traced back to the
source tensor whose constant it holds (or to its own initial values). Integer buffers
(``num_batches_tracked``) and empty tensors are not scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ckptsurgeon.examples import official_yolov7
from ckptsurgeon.examples.attention import CBAM, SEBlock
from ckptsurgeon.examples.yolov7 import RepConv, YoloBody
from ckptsurgeon.plan import is_bookkeeping

Edit = Callable[[nn.Module], nn.Module]

# --------------------------------------------------------------------------- editing helpers


def add_child(parent: nn.Module, name: str, child: nn.Module, *, after: str | None = None) -> None:
    """Register ``child`` in place, right after the child ``after`` (as the real class would register it)."""
    items = list(parent._modules.items())
    at = len(items) if after is None else [n for n, _ in items].index(after) + 1
    items.insert(at, (name, child))
    parent._modules.clear()
    parent._modules.update(items)


# --------------------------------------------------------------------------- ResNet-50 (torchvision / timm naming)


class SqueezeExcite(nn.Module):
    """timm's ``SEModule``: ``fc1`` and ``fc2`` 1x1 convs with bias."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(1, channels // reduction), 1)
        self.fc2 = nn.Conv2d(max(1, channels // reduction), channels, 1)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: ``conv1/bn1`` 1x1, ``conv2/bn2`` 3x3, ``conv3/bn3`` 1x1 (x4), ``downsample.{0,1}``."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class LayerScaleBottleneck(Bottleneck):
    """A block of another kind: the same leaf names as a Bottleneck and one extra tensor, ``gamma``."""

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__(c_in, planes, stride)
        self.gamma = nn.Parameter(torch.full((planes * self.expansion,), 1e-6))


class ResNet(nn.Module):
    """torchvision ResNet naming: ``conv1``, ``bn1``, ``layer1..4.<i>``, ``fc``; ``include_top=False`` drops ``fc``."""

    def __init__(self, depths: tuple[int, ...] = (3, 4, 6, 3), width: int = 4, num_classes: int = 10,
                 include_top: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = width
        for stage, depth in enumerate(depths, start=1):
            planes = width * 2 ** (stage - 1)
            blocks = [Bottleneck(c_in, planes, 1 if stage == 1 else 2)]
            blocks += [Bottleneck(planes * 4, planes) for _ in range(depth - 1)]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            c_in = planes * 4
        self.out_channels = c_in
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c_in, num_classes)


def resnet50(num_classes: int = 10, **kwargs: bool) -> ResNet:
    return ResNet((3, 4, 6, 3), 4, num_classes, **kwargs)


def bottlenecks(model: nn.Module) -> list[Bottleneck]:
    return [m for m in model.modules() if isinstance(m, Bottleneck)]


def with_se(model: nn.Module) -> nn.Module:
    """SE-ResNet: an ``se`` child in every bottleneck, registered after ``bn3`` as timm does."""
    for block in bottlenecks(model):
        add_child(block, "se", SqueezeExcite(block.bn3.num_features), after="bn3")
    return model


def se_resnet50() -> nn.Module:
    return with_se(resnet50())


def without_se(model: nn.Module) -> nn.Module:
    for block in bottlenecks(model):
        del block.se
    return model


def insert_block(stage: str, at: int, make: Callable[[nn.Module], nn.Module]) -> Edit:
    """An edit inserting ``make(neighbour)`` at ``<stage>.<at>`` (``at`` may be the stage's length: appended)."""
    def edit(model: nn.Module) -> nn.Module:
        layer = model.get_submodule(stage)
        layer.insert(at, make(layer[len(layer) - 1]))
        return model
    return edit


def same_block(last: Bottleneck) -> Bottleneck:
    return Bottleneck(last.conv3.out_channels, last.conv1.out_channels)


def layerscale_block(last: Bottleneck) -> Bottleneck:
    return LayerScaleBottleneck(last.conv3.out_channels, last.conv1.out_channels)


def new_classes(count: int) -> Edit:
    def edit(model: nn.Module) -> nn.Module:
        model.fc = nn.Linear(model.fc.in_features, count)
        return model
    return edit


# --------------------------------------------------------------------------- detectors around a ResNet-50


def conv_norm(c_in: int, c_out: int, k: int = 1) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` naming: ``0`` (conv) and ``1`` (norm) of a Sequential."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, 1, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class FPN(nn.Module):
    """``inner_blocks.<i>`` (1x1 lateral) and ``layer_blocks.<i>`` (3x3 output) per backbone level."""

    def __init__(self, in_channels: tuple[int, ...], c: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(ci, c, 1)) for ci in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 3, padding=1)) for _ in in_channels)


class DenseHead(nn.Module):
    """RetinaNet/FCOS-style head: ``cls_tower`` and ``bbox_tower`` of conv+BN, ``cls_logits``, ``bbox_pred``."""

    def __init__(self, c: int, num_classes: int, depth: int = 4) -> None:
        super().__init__()
        self.cls_tower = nn.Sequential(*(conv_norm(c, c, 3) for _ in range(depth)))
        self.bbox_tower = nn.Sequential(*(conv_norm(c, c, 3) for _ in range(depth)))
        self.cls_logits = nn.Conv2d(c, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, 4, 3, padding=1)


class Detector(nn.Module):
    """``backbone`` (a ResNet-50 trunk), ``neck`` (FPN) and ``head``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = resnet50(include_top=False)
        self.neck = FPN((32, 64, 128), 16)
        self.head = DenseHead(16, 8)


class Wrapper(nn.Module):
    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def wrap_backbone(model: nn.Module) -> nn.Module:
    """The detector wraps its backbone as ``body.backbone``; ``neck`` and ``head`` keep their names."""
    return Wrapper(body=Wrapper(backbone=model.backbone), neck=model.neck, head=model.head)


class FrozenBatchNorm2d(nn.Module):
    """torchvision's: ``weight``, ``bias``, ``running_mean``, ``running_var`` buffers, no ``num_batches_tracked``."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(bn, name).detach())   # the same storage: the same tensor


def freeze_norms(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child))
        else:
            freeze_norms(child)


def into_faster_rcnn(model: nn.Module) -> nn.Module:
    """An ImageNet ResNet-50 as torchvision's detection backbone: ``backbone.body`` (no ``fc``, frozen BN),
    ``backbone.fpn``, ``rpn.head``, ``roi_heads.box_head`` / ``box_predictor``."""
    del model.fc, model.avgpool
    freeze_norms(model)
    rpn = Wrapper(head=Wrapper(conv=nn.Sequential(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))),
                               cls_logits=nn.Conv2d(16, 3, 1), bbox_pred=nn.Conv2d(16, 12, 1)))
    roi = Wrapper(box_head=Wrapper(fc6=nn.Linear(16 * 49, 64), fc7=nn.Linear(64, 64)),
                  box_predictor=Wrapper(cls_score=nn.Linear(64, 91), bbox_pred=nn.Linear(64, 364)))
    return Wrapper(backbone=Wrapper(body=model, fpn=FPN((16, 32, 64, 128), 16)), rpn=rpn, roi_heads=roi)


# --------------------------------------------------------------------------- YOLOv7 (nets/yolo.py and official layouts)


def yolov7() -> nn.Module:
    return YoloBody(80, 8)


def yolov7_official() -> nn.Module:
    return official_yolov7.Model(80, 8)


def se_in_dark4_cv3(model: nn.Module) -> nn.Module:
    cv3 = model.backbone.dark4[1].cv3
    cv3.insert(2, SEBlock(cv3[1].conv.out_channels))
    return model


def rep_conv_1_to_288(model: nn.Module) -> nn.Module:
    """``rep_conv_1`` widened 64 -> 72 (256 -> 288 at full width); ``yolo_head_P3`` takes 72 channels and
    keeps its bias."""
    model.rep_conv_1 = RepConv(model.rep_conv_1.rbr_dense[0].in_channels, 72)
    old = model.yolo_head_P3
    model.yolo_head_P3 = nn.Conv2d(72, old.out_channels, 1)
    model.yolo_head_P3.bias = old.bias
    return model


def insert_layer(at: int, make: Callable[[], nn.Module]) -> Edit:
    def edit(model: nn.Module) -> nn.Module:
        model.model.insert(at, make())
        return model
    return edit


def drop_dark3_attention(model: nn.Module) -> nn.Module:
    del model.backbone.dark3[1]
    return model


NECK = ("sppcspc", "conv_for_P5", "conv_for_feat2", "conv3_for_upsample1", "conv_for_P4", "conv_for_feat1",
        "conv3_for_upsample2", "down_sample1", "conv3_for_downsample1", "down_sample2", "conv3_for_downsample2")


def neck_into_model(model: nn.Module) -> nn.Module:
    """The neck moves into a ``model`` container; ``backbone``, ``rep_conv_*`` and ``yolo_head_*`` stay."""
    neck = Wrapper(**{name: getattr(model, name) for name in NECK})
    for name in NECK:
        delattr(model, name)
    add_child(model, "model", neck, after="backbone")
    return model


# --------------------------------------------------------------------------- ViT (transformers' saved names)


class HFViTLayer(nn.Module):
    """transformers' ``ViTLayer``: ``attention.attention.{query,key,value}``, ``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``, ``layernorm_before``, ``layernorm_after``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.attention = Wrapper(attention=Wrapper(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d)),
                                 output=Wrapper(dense=nn.Linear(d, d)))
        self.intermediate = Wrapper(dense=nn.Linear(d, 4 * d))
        self.output = Wrapper(dense=nn.Linear(4 * d, d))
        self.layernorm_before = nn.LayerNorm(d)
        self.layernorm_after = nn.LayerNorm(d)


class HFViTModel(nn.Module):
    """transformers' ``ViTModel`` (no pooler): ``embeddings``, ``encoder.layer.<i>``, ``layernorm``."""

    def __init__(self, d: int = 8, depth: int = 12, patches: int = 16) -> None:
        super().__init__()
        self.embeddings = Wrapper(patch_embeddings=Wrapper(projection=nn.Conv2d(3, d, 4, 4)))
        self.embeddings.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.embeddings.position_embeddings = nn.Parameter(torch.randn(1, patches + 1, d))
        self.encoder = Wrapper(layer=nn.ModuleList(HFViTLayer(d) for _ in range(depth)))
        self.layernorm = nn.LayerNorm(d)


def vit_in_memory(norm_names: tuple[str, str] = ("layernorm_before", "layernorm_after"),
                  swap_norms: bool = False) -> Edit:
    """The in-memory layout ``layers.<i>.{<norm 1>, attention.{q,k,v,o}_proj, <norm 2>, mlp.{fc1,fc2}}``."""
    def edit(model: nn.Module) -> nn.Module:
        layers = nn.ModuleList()
        for old in model.encoder.layer:
            norms = (old.layernorm_after, old.layernorm_before) if swap_norms else (old.layernorm_before,
                                                                                     old.layernorm_after)
            self_attn = old.attention.attention
            attention = Wrapper(q_proj=self_attn.query, k_proj=self_attn.key, v_proj=self_attn.value,
                                o_proj=old.attention.output.dense)
            mlp = Wrapper(fc1=old.intermediate.dense, fc2=old.output.dense)
            layers.append(Wrapper(**{norm_names[0]: norms[0], "attention": attention, norm_names[1]: norms[1],
                                     "mlp": mlp}))
        return Wrapper(embeddings=model.embeddings, layers=layers, layernorm=model.layernorm)
    return edit


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """``make_source()`` builds the pretrained architecture; ``edit(fresh source model)`` the target.

    ``alternatives``: other edits giving the same target names and shapes (empty: decidable).
    ``row``: the issue's table row this scenario stands for, if any. ``fmt``: checkpoint format.
    """

    name: str
    what: str
    make_source: Callable[[], nn.Module]
    edit: Edit
    alternatives: tuple[Edit, ...] = ()
    row: str | None = None
    fmt: str = "pth"

    def build_source_model(self) -> nn.Module:
        torch.manual_seed(0)
        return self.make_source()

    def build_target_model(self) -> nn.Module:
        torch.manual_seed(1)
        return self.edit(self.make_source())

    def ground_truth(self) -> dict[str, str | None]:
        return truth_of(self.make_source, self.edit)

    def readings(self) -> list[dict[str, str | None]]:
        return [self.ground_truth()] + [truth_of(self.make_source, alt) for alt in self.alternatives]

    def undecidable_keys(self) -> frozenset[str]:
        return disputed_keys(self.readings())


def disputed_keys(readings: list[dict[str, str | None]]) -> frozenset[str]:
    """Target keys whose true source differs between readings (a key missing from a reading is disputed)."""
    return frozenset(k for k in readings[0] if len({r.get(k, "?") for r in readings}) > 1)


def _storage_key(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)


def truth_of(make_source: Callable[[], nn.Module], edit: Edit) -> dict[str, str | None]:
    """target key -> the source key whose tensor (same storage, same shape) it is, or None (new)."""
    return _reading(make_source, edit)[0]


def _reading(make_source: Callable[[], nn.Module], edit: Edit
             ) -> tuple[dict[str, str | None], dict[str, tuple[int, ...]]]:
    """The ground truth of one edit, and the target's shapes."""
    base = make_source()
    origin = {_storage_key(t): name for name, t in base.state_dict(keep_vars=True).items() if t.numel()}
    target = edit(base).state_dict(keep_vars=True)
    truth = {name: origin.get(_storage_key(t)) if t.numel() else None for name, t in target.items()}
    return truth, {name: tuple(t.shape) for name, t in target.items()}


def _table_rows() -> list[Scenario]:
    return [
        Scenario("se_resnet50", "ResNet-50 -> SE-ResNet-50: `se` (fc1, fc2) added in place to all 16 bottlenecks",
                 resnet50, with_se, row="SE-ResNet"),
        Scenario("resnet50_layer3_append", "ResNet-50 layer3 grows 6 -> 7 blocks, the new block appended",
                 resnet50, insert_block("layer3", 6, same_block),
                 tuple(insert_block("layer3", at, same_block) for at in range(1, 6)), row="stage grows by one block"),
        Scenario("yolov7_dark4_cv3_se", "YOLOv7 (nets/yolo.py): SE inserted at backbone.dark4.1.cv3.2",
                 yolov7, se_in_dark4_cv3, row="SE inside a Multi_Concat_Block's cv3"),
        Scenario("resnet50_layerscale_block_mid", "ResNet-50: a layer-scale bottleneck (one extra tensor, gamma) "
                 "inserted at layer3.3", resnet50, insert_block("layer3", 3, layerscale_block),
                 row="block of another kind inserted mid-stage"),
        Scenario("detector_wraps_backbone", "detector: backbone.* -> body.backbone.*, neck.* and head.* keep "
                 "their names", Detector, wrap_backbone, row="backbone wrapped by a detector"),
        Scenario("hf_vit_regrouped", "transformers ViT saved names -> layers.N.attention.{q,k,v,o}_proj, "
                 "layers.N.mlp.fc1/fc2 (norms keep names), safetensors", HFViTModel, vit_in_memory(),
                 row="library renames and regroups", fmt="safetensors"),
    ]


def _more() -> list[Scenario]:
    norms = ("norm1", "norm2")
    return [
        Scenario("resnet50_100_classes", "ResNet-50 retrained for 100 classes: fc 1000 -> 100",
                 lambda: resnet50(1000), new_classes(100)),
        Scenario("yolov7_channels_256_to_288", "YOLOv7: rep_conv_1 widened 64 -> 72 (256 -> 288 at full "
                 "width), yolo_head_P3 keeps its bias", yolov7, rep_conv_1_to_288),
        Scenario("yolov7_official_neck_cbam", "official YOLOv7 layout: CBAM inserted at model.16 after SPPCSPC "
                 "(every later index shifts)", yolov7_official, insert_layer(16, lambda: CBAM(32))),
        Scenario("yolov7_dark3_layer_removed", "YOLOv7 with an SE at backbone.dark3.1 -> plain YOLOv7 "
                 "(the SE removed from the Sequential)", lambda: YoloBody(80, 8, backbone_insert="se"),
                 drop_dark3_attention),
        Scenario("dataparallel_resnet50_se_insert", "target wrapped in DataParallel (module.*) with an SE "
                 "inserted at layer2.2", resnet50,
                 lambda m: nn.DataParallel(insert_block("layer2", 2, lambda b: SqueezeExcite(32))(m))),
        Scenario("yolov7_official_identical_conv", "official YOLOv7 layout: a Conv identical to model.4/5 "
                 "inserted at model.5 (later indices shift)", yolov7_official,
                 insert_layer(5, lambda: official_yolov7.Conv(8, 8, 3)),
                 tuple(insert_layer(at, lambda: official_yolov7.Conv(8, 8, 3)) for at in (4, 6))),
        Scenario("hf_vit_norms_renamed", "transformers ViT -> in-memory layout whose norms are renamed "
                 "norm1/norm2 (before/after give no name evidence)", HFViTModel, vit_in_memory(norms),
                 (vit_in_memory(norms, swap_norms=True),), fmt="safetensors"),
        Scenario("yolov7_neck_into_model", "YOLOv7: the neck moves into a `model.` container, backbone and "
                 "heads keep their names", yolov7, neck_into_model),
        Scenario("se_resnet50_se_removed", "SE-ResNet-50 -> ResNet-50: the in-place `se` child removed from "
                 "every bottleneck", se_resnet50, without_se),
        Scenario("resnet50_into_faster_rcnn", "ImageNet ResNet-50 -> torchvision-style detector: "
                 "backbone.body.* with FrozenBatchNorm2d, fc unused, FPN/RPN/ROI heads new",
                 lambda: resnet50(1000), into_faster_rcnn),
    ]


SCENARIOS: list[Scenario] = _table_rows() + _more()


# --------------------------------------------------------------------------- scoring by value

INITIAL = "<initial>"     # the target tensor kept its own initial values
OTHER = "<other>"         # values of no source tensor and not the initial ones
FIRST_ID = 2.0            # seeded constants 2, 3, 4, ...: never an initialiser's 0 or 1, exact in fp16 up to 2048


@dataclass(frozen=True)
class Score:
    """Each scored target key in one bucket; ``found`` says where its values came from."""

    correct: tuple[str, ...]
    wrong: tuple[str, ...]
    missed: tuple[str, ...]
    ambiguous: tuple[str, ...]
    found: Mapping[str, str]
    truth: Mapping[str, str | None]
    ambiguity_reported: bool | None = None   # None: not a ckptsurgeon run
    plan_seconds: float | None = None

    def explain(self, keys: tuple[str, ...], limit: int = 8) -> str:
        shown = [f"{k}: holds {self.found[k]}, truth {self.truth[k] or 'new'}" for k in keys[:limit]]
        return "; ".join(shown) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def seed_values(model: nn.Module) -> dict[float, str]:
    """Fill every floating tensor of ``model`` with its own constant; return constant -> key."""
    by_value = {}
    with torch.no_grad():
        for i, (name, tensor) in enumerate(model.state_dict().items()):
            if tensor.is_floating_point() and tensor.numel():
                tensor.fill_(FIRST_ID + i)
                by_value[FIRST_ID + i] = name
    return by_value


def scored(name: str, tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.numel() > 0 and not is_bookkeeping(name)


def trace(tensor: torch.Tensor, initial: torch.Tensor, by_value: Mapping[float, str]) -> str:
    """The source key whose constant ``tensor`` holds, INITIAL, or OTHER."""
    first = float(tensor.flatten()[0])
    if first in by_value and bool((tensor == first).all()):
        return by_value[first]
    return INITIAL if torch.equal(tensor, initial) else OTHER


def classify(found: Mapping[str, str], truth: Mapping[str, str | None], undecidable: frozenset[str],
             **extra: object) -> Score:
    buckets: dict[str, list[str]] = {"correct": [], "wrong": [], "missed": [], "ambiguous": []}
    for key, got in found.items():
        want = truth[key]
        if key in undecidable:
            bucket = "ambiguous"
        elif got == OTHER:
            bucket = "wrong"
        elif want is None:
            bucket = "correct" if got == INITIAL else "wrong"
        else:
            bucket = "correct" if got == want else "missed" if got == INITIAL else "wrong"
        buckets[bucket].append(key)
    return Score(**{k: tuple(v) for k, v in buckets.items()}, found=dict(found), truth=dict(truth), **extra)


def save_checkpoint(state: Mapping[str, torch.Tensor], directory: Path, name: str, fmt: str) -> Path:
    path = Path(directory) / f"{name}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(dict(state), path)
    return path


@dataclass(frozen=True)
class Prepared:
    scenario: Scenario
    path: Path
    source_state: Mapping[str, torch.Tensor]
    by_value: Mapping[float, str]
    readings: tuple[Mapping[str, str | None], ...]   # the ground truth first, then each alternative's
    undecidable: frozenset[str]
    target_shapes: Mapping[str, tuple[int, ...]]

    @property
    def truth(self) -> Mapping[str, str | None]:
        return self.readings[0]


def prepare(scenario: Scenario, directory: Path) -> Prepared:
    """Seed the source model, save its checkpoint, work out the ground truth."""
    source = scenario.build_source_model()
    by_value = seed_values(source)
    state = source.state_dict()
    path = save_checkpoint(state, directory, scenario.name, scenario.fmt)
    truth, shapes = _reading(scenario.make_source, scenario.edit)
    readings = [truth] + [truth_of(scenario.make_source, alt) for alt in scenario.alternatives]
    return Prepared(scenario, path, state, by_value, tuple(readings), disputed_keys(readings), shapes)


def _score_model(prepared: Prepared, model: nn.Module, initial: Mapping[str, torch.Tensor], **extra: object) -> Score:
    found = {name: trace(t, initial[name], prepared.by_value)
             for name, t in model.state_dict().items() if scored(name, t)}
    return classify(found, prepared.truth, prepared.undecidable, **extra)


def _fresh_target(scenario: Scenario) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    model = scenario.build_target_model()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def score_ckptsurgeon(prepared: Prepared, *, time_planning: bool = False) -> Score:
    """Run the real ``ckptsurgeon.transfer`` from the saved checkpoint and score the target by value.

    No gate can fail (``strict=False``, no ``min_coverage``): new and unused keys are what is being measured.
    """
    import ckptsurgeon

    model, initial = _fresh_target(prepared.scenario)
    report = ckptsurgeon.transfer(str(prepared.path), model, seed=0, strict=False)
    seconds = time_plan(prepared, model) if time_planning else None
    return _score_model(prepared, model, initial, ambiguity_reported=bool(report.plan.ambiguities),
                        plan_seconds=seconds)


def score_exact_name_loop(prepared: Prepared) -> Score:
    """The loop every training script pastes: keep a source tensor whose name and shape the target has."""
    model, initial = _fresh_target(prepared.scenario)
    own, source = model.state_dict(), prepared.source_state
    kept = {k: source[k] for k, v in own.items() if k in source and source[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    return _score_model(prepared, model, initial)


def time_plan(prepared: Prepared, model: nn.Module, repeat: int = 3) -> float:
    """Best-of-``repeat`` wall time of ``ckptsurgeon.make_plan`` on the two spec tables."""
    import ckptsurgeon

    source, target = ckptsurgeon.specs_of(prepared.source_state), ckptsurgeon.specs_of(model.state_dict())
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        ckptsurgeon.make_plan(source, target)
        best = min(best, time.perf_counter() - start)
    return best
