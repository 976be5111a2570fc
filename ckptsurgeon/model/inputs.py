"""Inputs for running a model: shapes from the command line, random tensors from a seed, or a tensor file."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import OptionError


def parse_shape(text: str) -> tuple[int, ...]:
    """``1,3,64,64`` (or ``1x3x64x64``) -> (1, 3, 64, 64)."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        raise OptionError(f"--input-shape {text!r}: expected sizes separated by commas, e.g. 1,3,640,640") from None
    if not shape or any(size < 0 for size in shape):
        raise OptionError(f"--input-shape {text!r}: expected non-negative sizes, e.g. 1,3,640,640")
    return shape


def random_inputs(shapes: Sequence[Sequence[int]], seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Standard normal tensors of these shapes, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator).to(dtype) for shape in shapes]


def load_inputs(path: str) -> list[torch.Tensor]:
    """The tensors of a file (read safely, any supported format), in file order, as positional inputs."""
    from ..io import open_checkpoint

    with open_checkpoint(path) as checkpoint:
        return [checkpoint[name] for name in checkpoint]
