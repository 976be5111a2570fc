"""A small YOLOv7 (phi 'l') with the state-dict keys of the widely used ``nets/yolo.py`` YoloBody.

Written from the key listing alone: same module names, same registration order, same 558 keys, and
at ``width=32, num_classes=80`` the same shapes. Other widths scale every channel by ``width / 32``.

Variants for surgery demos (both off by default, so the plain model matches the checkpoint):
- ``head_attention``: new named children ``feat1_att``, ``feat2_att``, ``feat3_att`` gate the three
  backbone features before the neck; every existing key keeps its name.
- ``backbone_insert``: one block inserted into ``backbone.dark3`` between the transition and the
  multi-concat block, which moves from ``dark3.1`` to ``dark3.2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ckptsurgeon.examples.attention import make_attention

NUM_ANCHORS = 3
BACKBONE_IDS = (-1, -3, -5, -6)  # outputs of a backbone multi-concat block that are concatenated
NECK_IDS = (-1, -2, -3, -4, -5, -6)


class Conv(nn.Module):
    """Conv2d without bias, BatchNorm2d, SiLU: keys ``conv.weight`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.bn(self.conv(x)))
        return y


class MultiConcatBlock(nn.Module):
    """ELAN block: two 1x1 branches, a chain of 3x3 convs, concat of chosen outputs, 1x1 fuse."""

    def __init__(
        self, c_in: int, c_hidden: int, c_inner: int, c_out: int, ids: Sequence[int], n: int = 4
    ) -> None:
        super().__init__()
        self.ids = tuple(ids)
        self.cv1 = Conv(c_in, c_hidden)
        self.cv2 = Conv(c_in, c_hidden)
        self.cv3 = nn.ModuleList(
            Conv(c_hidden if i == 0 else c_inner, c_inner, 3) for i in range(n)
        )
        widths = [c_hidden, c_hidden] + [c_inner] * n
        self.cv4 = Conv(sum(widths[i] for i in self.ids), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.cv1(x), self.cv2(x)
        outputs = [x1, x2]
        for conv in self.cv3:
            x2 = conv(x2)
            outputs.append(x2)
        y: torch.Tensor = self.cv4(torch.cat([outputs[i] for i in self.ids], dim=1))
        return y


class TransitionBlock(nn.Module):
    """Stride-2 downsampling by max-pool and by a 3x3 conv side by side; ``2 * c_out`` channels out."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, c_out)
        self.cv2 = Conv(c_in, c_out)
        self.cv3 = Conv(c_out, c_out, 3, 2)
        self.mp = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cv3(self.cv2(x)), self.cv1(self.mp(x))], dim=1)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling (5, 9, 13) in a cross-stage-partial split: keys ``cv1`` .. ``cv7``."""

    def __init__(self, c_in: int, c_out: int, kernels: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        self.cv1 = Conv(c_in, c_out)
        self.cv2 = Conv(c_in, c_out)
        self.cv3 = Conv(c_out, c_out, 3)
        self.cv4 = Conv(c_out, c_out)
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, padding=k // 2) for k in kernels)
        self.cv5 = Conv(c_out * (len(kernels) + 1), c_out)
        self.cv6 = Conv(c_out, c_out, 3)
        self.cv7 = Conv(2 * c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        pooled = self.cv6(self.cv5(torch.cat([x1] + [pool(x1) for pool in self.m], dim=1)))
        y: torch.Tensor = self.cv7(torch.cat([pooled, self.cv2(x)], dim=1))
        return y


class RepConv(nn.Module):
    """Training-time RepVGG conv: 3x3 and 1x1 conv+BN branches, summed.

    Keys ``rbr_dense.{0,1}`` and ``rbr_1x1.{0,1}``. The identity (BN only) branch exists only when in
    and out channels agree, which never happens in this model.
    """

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1) -> None:
        super().__init__()
        self.rbr_dense = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, s, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)
        )
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c_in, c_out, 1, s, bias=False), nn.BatchNorm2d(c_out))
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.act(self.rbr_dense(x) + self.rbr_1x1(x))
        return y


def elan_stage(c_in: int, c_trans: int, c_hidden: int, c_out: int) -> list[nn.Module]:
    """A backbone stage after ``dark2``: transition block, then multi-concat block."""
    return [
        TransitionBlock(c_in, c_trans),
        MultiConcatBlock(2 * c_trans, c_hidden, c_hidden, c_out, BACKBONE_IDS),
    ]


class Backbone(nn.Module):
    """``stem`` (3 convs) and ``dark2`` .. ``dark5``; returns the stride 8, 16 and 32 features."""

    def __init__(self, w: int, insert: str | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv(3, w, 3), Conv(w, 2 * w, 3, 2), Conv(2 * w, 2 * w, 3))
        # dark2 opens with a plain stride-2 conv; dark3..5 open with a transition block.
        self.dark2 = nn.Sequential(
            Conv(2 * w, 4 * w, 3, 2), MultiConcatBlock(4 * w, 2 * w, 2 * w, 8 * w, BACKBONE_IDS)
        )
        dark3 = elan_stage(8 * w, 4 * w, 4 * w, 16 * w)
        if insert is not None:
            dark3.insert(1, make_attention(insert, 8 * w))
        self.dark3 = nn.Sequential(*dark3)
        self.dark4 = nn.Sequential(*elan_stage(16 * w, 8 * w, 8 * w, 32 * w))
        # dark5 breaks the pattern of dark3/dark4 (hidden = transition width): 256 hidden, not 512, so
        # its output stays at 1024 channels (at width 32) like dark4's.
        self.dark5 = nn.Sequential(*elan_stage(32 * w, 16 * w, 8 * w, 32 * w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        feat1 = self.dark3(x)
        feat2 = self.dark4(feat1)
        feat3 = self.dark5(feat2)
        return feat1, feat2, feat3


class YoloBody(nn.Module):
    """YOLOv7 phi 'l': backbone, SPPCSPC, a PAN neck, RepConvs and three 1x1 heads.

    Args:
        num_classes: classes per anchor; each head has ``3 * (5 + num_classes)`` outputs.
        width: base channel count (32 in the real model); every channel count is a multiple of it.
        head_attention: ``se``, ``cbam`` or ``eca`` adds ``feat1_att``, ``feat2_att``, ``feat3_att``.
        backbone_insert: ``se``, ``cbam`` or ``eca`` inserted at ``backbone.dark3.1``.
    """

    def __init__(
        self,
        num_classes: int = 80,
        width: int = 8,
        *,
        head_attention: str | None = None,
        backbone_insert: str | None = None,
    ) -> None:
        super().__init__()
        w, outputs = width, NUM_ANCHORS * (5 + num_classes)
        self.backbone = Backbone(w, insert=backbone_insert)
        # Registered right after the backbone so the new keys sit in the middle of the state dict, not
        # at its end: the harder case for loaders that go by key order.
        self.head_attention = head_attention
        if head_attention is not None:
            self.feat1_att = make_attention(head_attention, 16 * w)
            self.feat2_att = make_attention(head_attention, 32 * w)
            self.feat3_att = make_attention(head_attention, 32 * w)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.sppcspc = SPPCSPC(32 * w, 16 * w)
        self.conv_for_P5 = Conv(16 * w, 8 * w)
        self.conv_for_feat2 = Conv(32 * w, 8 * w)
        self.conv3_for_upsample1 = MultiConcatBlock(16 * w, 8 * w, 4 * w, 8 * w, NECK_IDS)
        self.conv_for_P4 = Conv(8 * w, 4 * w)
        self.conv_for_feat1 = Conv(16 * w, 4 * w)
        self.conv3_for_upsample2 = MultiConcatBlock(8 * w, 4 * w, 2 * w, 4 * w, NECK_IDS)
        self.down_sample1 = TransitionBlock(4 * w, 4 * w)
        self.conv3_for_downsample1 = MultiConcatBlock(16 * w, 8 * w, 4 * w, 8 * w, NECK_IDS)
        self.down_sample2 = TransitionBlock(8 * w, 8 * w)
        self.conv3_for_downsample2 = MultiConcatBlock(32 * w, 16 * w, 8 * w, 16 * w, NECK_IDS)
        self.rep_conv_1 = RepConv(4 * w, 8 * w)
        self.rep_conv_2 = RepConv(8 * w, 16 * w)
        self.rep_conv_3 = RepConv(16 * w, 32 * w)
        self.yolo_head_P3 = nn.Conv2d(8 * w, outputs, 1)
        self.yolo_head_P4 = nn.Conv2d(16 * w, outputs, 1)
        self.yolo_head_P5 = nn.Conv2d(32 * w, outputs, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the raw head maps coarsest first: strides 32, 16 and 8."""
        feat1, feat2, feat3 = self.backbone(x)
        if self.head_attention is not None:
            feat1, feat2, feat3 = self.feat1_att(feat1), self.feat2_att(feat2), self.feat3_att(feat3)
        p5 = self.sppcspc(feat3)
        p4 = torch.cat([self.conv_for_feat2(feat2), self.upsample(self.conv_for_P5(p5))], dim=1)
        p4 = self.conv3_for_upsample1(p4)
        p3 = torch.cat([self.conv_for_feat1(feat1), self.upsample(self.conv_for_P4(p4))], dim=1)
        p3 = self.conv3_for_upsample2(p3)
        p4 = self.conv3_for_downsample1(torch.cat([self.down_sample1(p3), p4], dim=1))
        p5 = self.conv3_for_downsample2(torch.cat([self.down_sample2(p4), p5], dim=1))
        return (
            self.yolo_head_P5(self.rep_conv_3(p5)),
            self.yolo_head_P4(self.rep_conv_2(p4)),
            self.yolo_head_P3(self.rep_conv_1(p3)),
        )


def build_yolov7(num_classes: int = 80, width: int = 8, **variant: str | None) -> nn.Module:
    """Build the stand-in YOLOv7; ``variant`` takes ``head_attention`` and ``backbone_insert``."""
    return YoloBody(num_classes, width, **variant)
