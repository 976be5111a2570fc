"""A stand-in for the official YOLOv7 repository's layout: one ``nn.Sequential`` built from a layer list.

Every key is ``model.<index>.<...>``: ``model.0.conv.weight``, ``model.0.bn.running_mean``, ...; the
last layer is an ``IDetect`` head with ``anchors``, ``anchor_grid``, ``m.<i>`` (1x1 convs with bias),
``ia.<i>.implicit`` and ``im.<i>.implicit``. The layer list (``SPEC``) is a small model of our own in the
official style: ELAN-like concat blocks, an MP transition, SPPCSPC, an FPN/PAN neck, RepConv, IDetect.

``insert_at=k`` inserts one attention layer as ``model.k``: it gates the output of layer ``k - 1`` and
stands in for that output everywhere later, so each old ``model.j`` with ``j >= k`` becomes
``model.{j + 1}`` and every ``from`` reference is moved to match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ckptsurgeon.examples import yolov7
from ckptsurgeon.examples.attention import ATTENTION, make_attention

From = int | Sequence[int]
LayerSpec = tuple[From, str, tuple[Any, ...]]

ANCHORS: tuple[tuple[int, ...], ...] = (
    (12, 16, 19, 36, 40, 28),  # stride 8
    (36, 75, 76, 55, 72, 146),  # stride 16
    (142, 110, 192, 243, 459, 401),  # stride 32
)

# (from, module, args). Channel counts are for width 32 and scale by width / 32. ``from`` is -1 for
# the previous layer, other negatives count back from this layer, non-negatives are layer indices.
SPEC: tuple[LayerSpec, ...] = (
    (-1, "Conv", (32, 3, 2)),  # 0   stride 2
    (-1, "Conv", (64, 3, 2)),  # 1   stride 4
    (-1, "Conv", (32, 1, 1)),  # 2   ELAN: two 1x1 branches, a 3x3 chain on the second
    (-2, "Conv", (32, 1, 1)),  # 3
    (-1, "Conv", (32, 3, 1)),  # 4
    (-1, "Conv", (32, 3, 1)),  # 5
    ([-1, -2, -3, -4], "Concat", (1,)),  # 6
    (-1, "Conv", (64, 1, 1)),  # 7
    (-1, "MP", ()),  # 8   transition: max-pool branch ...
    (-1, "Conv", (64, 1, 1)),  # 9
    (-3, "Conv", (64, 1, 1)),  # 10  ... and strided-conv branch
    (-1, "Conv", (64, 3, 2)),  # 11
    ([-1, -3], "Concat", (1,)),  # 12  P3, stride 8
    (-1, "Conv", (128, 3, 2)),  # 13  P4, stride 16
    (-1, "Conv", (256, 3, 2)),  # 14  P5, stride 32
    (-1, "SPPCSPC", (128,)),  # 15
    (-1, "Conv", (64, 1, 1)),  # 16
    (-1, "nn.Upsample", (None, 2, "nearest")),  # 17
    (13, "Conv", (64, 1, 1)),  # 18
    ([-1, -2], "Concat", (1,)),  # 19
    (-1, "Conv", (64, 1, 1)),  # 20
    (-1, "Conv", (32, 1, 1)),  # 21
    (-1, "nn.Upsample", (None, 2, "nearest")),  # 22
    (12, "Conv", (32, 1, 1)),  # 23
    ([-1, -2], "Concat", (1,)),  # 24
    (-1, "Conv", (32, 1, 1)),  # 25  out, stride 8
    (-1, "Conv", (64, 3, 2)),  # 26
    ([-1, 20], "Concat", (1,)),  # 27
    (-1, "Conv", (64, 1, 1)),  # 28  out, stride 16
    (-1, "Conv", (128, 3, 2)),  # 29
    ([-1, 15], "Concat", (1,)),  # 30
    (-1, "Conv", (128, 1, 1)),  # 31  out, stride 32
    (25, "RepConv", (64, 3, 1)),  # 32
    (28, "RepConv", (128, 3, 1)),  # 33
    (31, "RepConv", (256, 3, 1)),  # 34
    ([32, 33, 34], "IDetect", ()),  # 35
)


class Conv(yolov7.Conv):
    """``models.common.Conv``: conv, bn, act."""


class RepConv(yolov7.RepConv):
    """``models.common.RepConv``: ``rbr_dense`` and ``rbr_1x1`` conv+BN branches."""


class SPPCSPC(yolov7.SPPCSPC):
    """``models.common.SPPCSPC``: ``cv1`` .. ``cv7``."""


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension``."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class MP(nn.Module):
    """Max-pool with stride equal to the kernel (halves the resolution by default)."""

    def __init__(self, k: int = 2) -> None:
        super().__init__()
        self.m = nn.MaxPool2d(k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.m(x)
        return y


class ImplicitA(nn.Module):
    """A learned per-channel offset added to the input (``implicit``: (1, C, 1, 1), near 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitM(nn.Module):
    """A learned per-channel scale applied to the output (``implicit``: (1, C, 1, 1), near 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


class IDetect(nn.Module):
    """Detection head: per level ``ia`` (add), ``m`` (1x1 conv), ``im`` (scale).

    Returns one (B, anchors, H, W, 5 + classes) map per level.
    """

    anchors: torch.Tensor       # buffers, registered in __init__
    anchor_grid: torch.Tensor

    def __init__(self, num_classes: int, anchors: Sequence[Sequence[int]], ch: Sequence[int]) -> None:
        super().__init__()
        self.nc, self.no = num_classes, num_classes + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        grid = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", grid)  # in grid cells once Model divides by the strides
        self.register_buffer("anchor_grid", grid.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.ia = nn.ModuleList(ImplicitA(c) for c in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = []
        for x, implicit_a, conv, implicit_m in zip(xs, self.ia, self.m, self.im):
            y = implicit_m(conv(implicit_a(x)))
            b, _, h, w = y.shape
            maps.append(y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return maps


@dataclass(frozen=True)
class Layer:
    """One resolved spec line: absolute source indices (-1 is the input image)."""

    sources: tuple[int, ...]
    many: bool  # the module takes a list of tensors (Concat, IDetect)
    name: str
    args: tuple[Any, ...]


def resolve_layers(cfg: Sequence[LayerSpec]) -> list[Layer]:
    """Turn relative ``from`` references into absolute layer indices."""
    layers = []
    for i, (src, name, args) in enumerate(cfg):
        many = not isinstance(src, int)
        refs = [src] if isinstance(src, int) else list(src)
        layers.append(Layer(tuple(i + j if j < 0 else j for j in refs), many, name, tuple(args)))
    return layers


def insert_layer(layers: list[Layer], at: int, kind: str) -> list[Layer]:
    """Insert attention ``kind`` as layer ``at``, standing in for the output of layer ``at - 1``."""
    if not 0 <= at < len(layers):
        raise ValueError(f"insert_at={at} is outside 0..{len(layers) - 1}")
    if kind.lower() not in ATTENTION:
        raise ValueError(f"unknown attention {kind!r}: choose one of {', '.join(ATTENTION)}")

    def moved(j: int) -> int:
        if j < at - 1:
            return j
        return at if j == at - 1 else j + 1

    later = [replace(layer, sources=tuple(moved(j) for j in layer.sources)) for layer in layers[at:]]
    return layers[:at] + [Layer((at - 1,), False, kind, ())] + later


def scale_channels(channels: int, width: int) -> int:
    """A spec channel count (given for width 32) at ``width``."""
    return max(1, channels * width // 32)


def build_module(
    layer: Layer, c_ins: list[int], width: int, num_classes: int, anchors: Sequence[Sequence[int]]
) -> tuple[nn.Module, int]:
    """Build one layer's module; return it with its output channel count."""
    name, args, c1 = layer.name, layer.args, c_ins[0]
    if name in ("Conv", "RepConv"):
        c2 = scale_channels(args[0], width)
        return (Conv if name == "Conv" else RepConv)(c1, c2, *args[1:]), c2
    if name == "SPPCSPC":
        c2 = scale_channels(args[0], width)
        return SPPCSPC(c1, c2), c2
    if name == "MP":
        return MP(*args), c1
    if name == "Concat":
        return Concat(*args), sum(c_ins)
    if name == "nn.Upsample":
        return nn.Upsample(*args), c1
    if name == "IDetect":
        return IDetect(num_classes, anchors, c_ins), 0
    if name.lower() in ATTENTION:
        return make_attention(name, c1), c1
    raise ValueError(f"unknown module {name!r} in the layer spec")


class Model(nn.Module):
    """``models.yolo.Model`` stand-in: ``self.model`` is one ``nn.Sequential`` of the spec's layers.

    Args:
        num_classes: classes; each head conv has ``3 * (5 + num_classes)`` outputs.
        width: base channels (the spec's channels are for 32).
        cfg: the layer list, ``SPEC`` by default.
        insert_at: index of an attention layer to insert (``None``: none); later indices shift by one.
        insert: ``se``, ``cbam`` or ``eca`` (any case).
    """

    def __init__(
        self,
        num_classes: int = 80,
        width: int = 8,
        *,
        cfg: Sequence[LayerSpec] = SPEC,
        ch: int = 3,
        anchors: Sequence[Sequence[int]] = ANCHORS,
        insert_at: int | None = None,
        insert: str = "se",
    ) -> None:
        super().__init__()
        layers = resolve_layers(cfg)
        if insert_at is not None:
            layers = insert_layer(layers, insert_at, insert)
        channels: list[int] = []
        modules = []
        for i, layer in enumerate(layers):
            c_ins = [ch if j < 0 else channels[j] for j in layer.sources]
            module, c_out = build_module(layer, c_ins, width, num_classes, anchors)
            # nn.Module.__setattr__ stores any value; its hint names only tensors and modules
            module.i, module.f = i, list(layer.sources) if layer.many else layer.sources[0]  # type: ignore[assignment]
            modules.append(module)
            channels.append(c_out)
        self.model = nn.Sequential(*modules)
        self._scale_anchors(ch)

    def _scale_anchors(self, ch: int, size: int = 64) -> None:
        """Measure each level's stride with one probe forward; store anchors in grid cells."""
        detect = self.model[-1]
        assert isinstance(detect, IDetect)   # build_module makes the spec's last layer the head
        probe = torch.zeros(1, ch, size, size, device=detect.anchors.device)
        was_training = self.training
        self.eval()  # keep BatchNorm running stats untouched
        with torch.no_grad():
            maps = self(probe)
        self.train(was_training)
        self.stride = torch.tensor([size / m.shape[2] for m in maps], device=detect.anchors.device)
        detect.stride = self.stride
        detect.anchors /= self.stride.view(-1, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor | list[torch.Tensor]] = []
        for module in self.model:
            f = _layer_from(module)
            sources = f if isinstance(f, list) else [f]
            inputs = [x if j < 0 else outputs[j] for j in sources]
            outputs.append(module(inputs if isinstance(f, list) else inputs[0]))
        maps = outputs[-1]
        assert isinstance(maps, list)   # the last layer is the IDetect head: one map per level
        return maps


def _layer_from(module: nn.Module) -> int | list[int]:
    """The ``f`` (from) that Model sets on each layer, as the official code does."""
    # a plain attribute: nn.Module.__getattr__'s hint (tensors and modules) does not cover it
    sources: int | list[int] = getattr(module, "f")
    return sources
