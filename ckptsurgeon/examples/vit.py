"""A tiny Vision Transformer with timm's state-dict keys, for the shipped recipes' tests and demos.

Keys as in ``timm.models.vision_transformer.VisionTransformer`` (class token, no register tokens):
``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + (img_size / patch_size)**2, D), ``patch_embed.proj``,
``blocks.N.norm1`` / ``attn.qkv`` / ``attn.proj`` / ``norm2`` / ``mlp.fc1`` / ``mlp.fc2``, ``norm`` and
``head``. Only the dimensions are small; ``img_size`` and ``patch_size`` are the real ones, so the
position embedding has the real number of tokens (197 at 224 / 16, 577 at 384 / 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """A stride-``patch_size`` conv: ``proj``; returns (B, N, D) tokens."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens: torch.Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return tokens


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (D -> 3D) and ``proj``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(b, n, d))
        return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-norm transformer block: ``norm1``, ``attn``, ``norm2``, ``mlp``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class VisionTransformer(nn.Module):
    """timm's ViT layout: class token, learned absolute position embedding, pre-norm blocks, head.

    Args:
        img_size: input side; with ``patch_size`` it sets the number of position embeddings.
        patch_size: side of a patch.
        num_classes: outputs of ``head``.
        embed_dim, depth, num_heads: the transformer's width, block count and heads.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, num_classes: int = 1000, *,
                 embed_dim: int = 24, depth: int = 4, num_heads: int = 2, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.patch_embed.num_patches, embed_dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        logits: torch.Tensor = self.head(self.norm(self.blocks(tokens))[:, 0])
        return logits


def build(img_size: int = 224, num_classes: int = 1000, patch_size: int = 16, depth: int = 4) -> VisionTransformer:
    """A tiny ViT-B/16-shaped network (timm naming) for ``img_size`` inputs and ``num_classes`` outputs."""
    return VisionTransformer(img_size, patch_size, num_classes, depth=depth)
