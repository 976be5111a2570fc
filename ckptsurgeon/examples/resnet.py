"""A tiny ResNet-50 with torchvision's state-dict keys, for the shipped recipes' tests and demos.

Same module names and registration order as ``torchvision.models.resnet50``: ``conv1``, ``bn1``,
``layer1`` .. ``layer4`` of 3, 4, 6 and 3 Bottleneck blocks (``conv1``/``bn1``/``conv2``/``bn2``/
``conv3``/``bn3``, and ``downsample.0``/``downsample.1`` on each stage's first block), then ``fc``. Only
the widths are small (``width=64`` would give the real shapes), so it builds in milliseconds.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS = (3, 4, 6, 3)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride, as torchvision's v1.5), 1x1 expand; residual added before ReLU."""

    def __init__(self, c_in: int, planes: int, stride: int = 1,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        c_out = planes * EXPANSION
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = norm_layer(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        out: torch.Tensor = self.relu(self.bn3(self.conv3(y)) + shortcut)
        return out


class ResNet(nn.Module):
    """torchvision's ResNet layout with Bottleneck blocks.

    Args:
        num_classes: outputs of ``fc``.
        width: channels of the stem; stage ``i`` has ``width * 2**i`` planes and 4 times that out.
        blocks: Bottleneck blocks per stage (ResNet-50: 3, 4, 6, 3).
        norm_layer: the BatchNorm class (a detector may pass a frozen one).
    """

    def __init__(self, num_classes: int = 1000, width: int = 4, blocks: tuple[int, ...] = BLOCKS,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        c_in = width
        for stage, depth in enumerate(blocks):
            planes = width * 2**stage
            layer = [Bottleneck(c_in if i == 0 else planes * EXPANSION, planes, 2 if i == 0 and stage else 1,
                                norm_layer) for i in range(depth)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
            c_in = planes * EXPANSION
        self.num_stages = len(blocks)
        self.out_channels = c_in
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every ``layer<N>``, at strides 4, 8, 16 and 32."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(self.stage_outputs(x)[-1]), 1))
        return logits


def build(num_classes: int = 1000, width: int = 4) -> ResNet:
    """A tiny ResNet-50 (blocks 3, 4, 6, 3) with ``num_classes`` outputs."""
    return ResNet(num_classes, width)
