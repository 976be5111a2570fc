"""Tiny models and a deterministic training loop for the freeze, BatchNorm, group and schedule tests."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class BackboneHead(nn.Module):
    """``backbone`` (conv, BatchNorm2d, conv, BatchNorm2d) under a Linear ``head``: freeze the backbone,
    train the head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        )
        self.head = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))


class AffinelessNormBlock(nn.Module):
    """A block whose BatchNorm has no weight or bias: its parameters are the conv's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build()


def batches(count: int, *, seed: int = 1, size: int = 4, classes: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` fixed (image, label) batches: the same tensors on every call with the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=generator), torch.randint(0, classes, (size,), generator=generator))
            for _ in range(count)]


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer,
                data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    model.train()
    for images, labels in data:
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def optimizer_names(optimizer: torch.optim.Optimizer) -> list[str]:
    return [group["name"] for group in optimizer.param_groups]


def param_ids(optimizer: torch.optim.Optimizer) -> list[int]:
    return [id(param) for group in optimizer.param_groups for param in group["params"]]
