"""A tiny detector that holds the ResNet-50 stand-in the way torchvision's detection models do.

Keys as in ``torchvision.models.detection.backbone_utils.BackboneWithFPN``: the classification network
without ``avgpool`` and ``fc`` under ``backbone.body.`` (``IntermediateLayerGetter`` keeps the children's
names: ``backbone.body.conv1``, ``backbone.body.layer1.0.conv1`` ...), the feature pyramid under
``backbone.fpn.inner_blocks.N.0`` / ``backbone.fpn.layer_blocks.N.0``, then a small shared ``head``.
The body uses ordinary BatchNorm2d; a recipe decides whether it is frozen (torchvision builds detectors
with FrozenBatchNorm2d, which ``batchnorm = "frozen"`` swaps in).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckptsurgeon.examples.resnet import ResNet

RETURN_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class IntermediateLayerGetter(nn.ModuleDict):
    """The children of ``model`` up to the last of ``return_layers``, under their own names; returns
    the outputs of ``return_layers`` in order."""

    def __init__(self, model: nn.Module, return_layers: tuple[str, ...] = RETURN_LAYERS) -> None:
        layers: dict[str, nn.Module] = {}
        for name, module in model.named_children():
            layers[name] = module
            if name == return_layers[-1]:
                break
        super().__init__(layers)
        self.return_layers = return_layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                outputs.append(x)
        return outputs


class FeaturePyramidNetwork(nn.Module):
    """Lateral 1x1 convs (``inner_blocks``) and 3x3 output convs (``layer_blocks``), top-down sum."""

    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        last = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last)]
        for index in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[index](features[index])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.layer_blocks[index](last))
        return results


class BackboneWithFPN(nn.Module):
    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(body)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels: list[torch.Tensor] = self.fpn(self.body(x))
        return levels


class Head(nn.Module):
    """One 3x3 conv shared by every pyramid level, then class logits and box deltas per anchor."""

    def __init__(self, channels: int, num_classes: int, num_anchors: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        hidden = [F.relu(self.conv(f)) for f in features]
        return [(self.cls_logits(h), self.bbox_pred(h)) for h in hidden]


class Detector(nn.Module):
    """``backbone.body`` (ResNet-50 without ``fc``), ``backbone.fpn`` and ``head``.

    Args:
        num_classes: classes of the head.
        width: the ResNet stand-in's stem width (its ``fc`` is never built into the detector's keys).
        fpn_channels: channels of every pyramid level.
    """

    def __init__(self, num_classes: int = 2, width: int = 4, fpn_channels: int = 16) -> None:
        super().__init__()
        resnet = ResNet(num_classes=1, width=width)
        in_channels = [width * 2**stage * 4 for stage in range(resnet.num_stages)]
        self.backbone = BackboneWithFPN(resnet, in_channels, fpn_channels)
        self.head = Head(fpn_channels, num_classes)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        outputs: list[tuple[torch.Tensor, torch.Tensor]] = self.head(self.backbone(x))
        return outputs


def build(num_classes: int = 2, width: int = 4) -> Detector:
    """A tiny detector with the ResNet-50 stand-in under ``backbone.body.``."""
    return Detector(num_classes, width)
