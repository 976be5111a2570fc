"""Tiny models with the key naming of well-known families, for tests of matching and transfer.

Each has an option that inserts a module into a numbered container, shifting later indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ckptsurgeon.examples.attention import make_attention


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


class Attention(nn.Module):
    """timm-style self-attention: ``qkv`` (D -> 3D) and ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``norm1``, ``attn``, ``norm2``, ``mlp``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TinyViT(nn.Module):
    """timm ViT naming: ``cls_token``, ``pos_embed`` (1, 1 + N, D), ``patch_embed.proj``,
    ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``, ``head``."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        embed_dim: int = 16,
        depth: int = 2,
        num_heads: int = 2,
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + num_patches, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


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
