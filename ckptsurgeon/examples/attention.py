"""Small attention blocks that people insert into pretrained detectors (SE, CBAM, ECA).

Every block keeps the shape of its input, so it can be dropped between any two layers. Their tensors
are the "new" parts of a modified architecture: a checkpoint never has them.
"""

from __future__ import annotations

import torch
from torch import nn


def hidden_channels(channels: int, reduction: int, min_hidden: int = 1) -> int:
    """Width of a squeeze MLP: ``channels // reduction``, floored at ``min_hidden``.

    ``min_hidden=0`` reproduces the naive formula, which gives 0 hidden units (``Linear(3, 0)``)
    whenever ``channels < reduction``: degenerate tensors the inspect command warns about.
    """
    return max(min_hidden, channels // reduction)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average pool, two Linear layers, sigmoid gate per channel.

    Keys: ``fc.0.weight`` (hidden, channels) and ``fc.2.weight`` (channels, hidden).
    """

    def __init__(self, channels: int, reduction: int = 16, *, min_hidden: int = 1) -> None:
        super().__init__()
        hidden = hidden_channels(channels, reduction, min_hidden)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class ChannelGate(nn.Module):
    """CBAM's channel attention: one MLP shared by the average- and max-pooled channel vectors.

    Linear layers rather than 1x1 convs: with ``min_hidden=0`` a zero-width Linear still runs forward,
    a zero-channel Conv2d does not.
    """

    def __init__(self, channels: int, reduction: int = 16, *, min_hidden: int = 1) -> None:
        super().__init__()
        hidden = hidden_channels(channels, reduction, min_hidden)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return x * gate[:, :, None, None]


class SpatialGate(nn.Module):
    """CBAM's spatial attention: a k x k conv over the channel-mean and channel-max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: channel gate, then spatial gate.

    Keys: ``channel.mlp.0.weight`` (hidden, channels), ``channel.mlp.2.weight`` (channels, hidden)
    and ``spatial.conv.weight`` (1, 2, k, k).
    """

    def __init__(
        self, channels: int, reduction: int = 16, kernel_size: int = 7, *, min_hidden: int = 1
    ) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction, min_hidden=min_hidden)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated: torch.Tensor = self.spatial(self.channel(x))
        return gated


class ECA(nn.Module):
    """Efficient channel attention: a 1-D conv across the pooled channel vector.

    Key: ``conv.weight`` (1, 1, k_size). ``channels`` is unused: it keeps the constructor like
    the others'.
    """

    def __init__(self, channels: int, k_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv1d(1, 1, k_size, padding=k_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C): channels become the sequence
        gate = torch.sigmoid(self.conv(pooled)).squeeze(1)
        return x * gate[:, :, None, None]


ATTENTION: dict[str, type[nn.Module]] = {"se": SEBlock, "cbam": CBAM, "eca": ECA}


def make_attention(kind: str, channels: int, **options: int) -> nn.Module:
    """Build the attention block named ``kind`` (``se``, ``cbam`` or ``eca``, any case).

    ``options`` go to its constructor (``reduction``, ``min_hidden``, ``kernel_size``, ``k_size``).
    """
    block = ATTENTION.get(kind.lower())
    if block is None:
        raise ValueError(f"unknown attention {kind!r}: choose one of {', '.join(ATTENTION)}")
    return block(channels, **options)
