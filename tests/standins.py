"""Tiny models with the key naming of well-known families, for tests of matching and transfer.

Each has an option that inserts a module into a numbered container, shifting later indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckptsurgeon.examples.attention import make_attention
from ckptsurgeon.examples.vit import VisionTransformer


class BasicBlock(nn.Module):
    """ResNet basic block: ``conv1``, ``bn1``, ``conv2``, ``bn2`` and, when the shape changes,
    ``downsample.0`` (1x1 conv) and ``downsample.1`` (BN)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + shortcut)


class TinyResNet(nn.Module):
    """ResNet naming: ``conv1``, ``bn1``, ``layer<N>.<i>.*`` (N from 1), ``fc``.

    ``block_insert=(stage, index, kind)`` inserts attention ``kind`` (``se``, ``cbam``, ``eca``) at
    ``layer<stage>.<index>``; the blocks from ``index`` on move up by one.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, ...] = (8, 16),
        blocks: tuple[int, ...] = (2, 2),
        block_insert: tuple[int, int, str] | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, blocks), start=1):
            first = BasicBlock(c_in, width, 1 if stage == 1 else 2)
            layer = [first] + [BasicBlock(width, width) for _ in range(depth - 1)]
            if block_insert is not None and block_insert[0] == stage:
                layer.insert(block_insert[1], make_attention(block_insert[2], width))
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
            c_in = width
        self.num_stages = len(widths)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(x.mean(dim=(2, 3)))


class TinyViT(VisionTransformer):
    """timm ViT naming (``ckptsurgeon.examples.vit``) at test sizes: ``cls_token``, ``pos_embed`` (1, 1 + N, D),
    ``patch_embed.proj``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, embed_dim: int = 16, depth: int = 2,
                 num_heads: int = 2, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__(img_size, patch_size, num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         in_chans=in_chans)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """``gamma`` (layer scale), ``dwconv`` (7x7 depthwise), ``norm``, ``pwconv1``, ``pwconv2``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    """``downsample.{0,1}`` (norm, 2x2 stride-2 conv; absent in the first stage) and ``blocks``."""

    def __init__(self, c_in: int, dim: int, depth: int, insert_at: int | None = None) -> None:
        super().__init__()
        self.downsample = nn.Identity()
        if c_in != dim:
            self.downsample = nn.Sequential(LayerNorm2d(c_in), nn.Conv2d(c_in, dim, 2, 2))
        blocks = [ConvNeXtBlock(dim) for _ in range(depth)]
        if insert_at is not None:
            blocks.insert(insert_at, ConvNeXtBlock(dim))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class TinyConvNeXt(nn.Module):
    """ConvNeXt naming: ``stem.{0,1}``, ``stages.<s>.downsample.*``, ``stages.<s>.blocks.<i>.*``,
    ``norm``, ``head``.

    ``insert=(stage, index)`` adds a block, identical in shape to its neighbours, at
    ``stages.<stage>.blocks.<index>``; the blocks from ``index`` on move up by one.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        dims: tuple[int, ...] = (8, 16),
        depths: tuple[int, ...] = (2, 2),
        insert: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4), LayerNorm2d(dims[0]))
        stages, c_in = [], dims[0]
        for s, (dim, depth) in enumerate(zip(dims, depths)):
            insert_at = insert[1] if insert is not None and insert[0] == s else None
            stages.append(ConvNeXtStage(c_in, dim, depth, insert_at))
            c_in = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(c_in)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean(dim=(2, 3))))


class ModuleListNet(nn.Module):
    """``layers`` is a ModuleList of channel-keeping Conv1d layers with kernels 1, 3, 5, ...

    Every layer has its own weight shape. ``insert_at=k`` inserts a new layer at ``layers.k`` with
    the kernel of the layer that follows it, so the new ``layers.k`` has the name and the shape of
    the old ``layers.k``, yet its input is the output of ``layers.{k-1}``; the old ``layers.k`` is
    now ``layers.{k+1}``. An exact name-and-shape match copies the wrong weights there.
    """

    def __init__(self, n: int = 4, insert_at: int | None = None, channels: int = 4) -> None:
        super().__init__()
        kernels = [2 * i + 1 for i in range(n)]
        if insert_at is not None:
            if not 0 <= insert_at < n:
                raise ValueError(f"insert_at={insert_at} is outside 0..{n - 1}")
            kernels.insert(insert_at, kernels[insert_at])
        self.layers = nn.ModuleList(
            nn.Conv1d(channels, channels, k, padding=k // 2) for k in kernels
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x
