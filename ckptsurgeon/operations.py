"""Named operations that compute a target tensor from several source tensors: the ``compute`` steps of a
plan (``method`` names one, with an optional argument: ``average:0.2,0.8``).

Each operation gets its sources as loaders, called one at a time, so an operation can fold them in without
holding them all (an average of five checkpoints holds one source tensor and one fp32 accumulator). Like
``RESIZE_METHODS``, the registry is what plans, reports and the CLI name; planning never runs one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import MappingError

if TYPE_CHECKING:
    import torch

Loader = Callable[[], "torch.Tensor"]
Run = Callable[[Sequence[Loader], "str | None"], "torch.Tensor"]


@dataclass(frozen=True)
class Operation:
    """A named operation: ``where`` is ``module:function`` (imported when first run, so planning and
    reports stay torch-free), called as ``function(loaders, arg)``."""

    name: str
    summary: str
    where: str

    def run(self, loaders: Sequence[Loader], arg: str | None) -> torch.Tensor:
        module, _, function = self.where.partition(":")
        run: Run = getattr(importlib.import_module(module, __package__), function)
        return run(loaders, arg)


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("average", "average:W1,W2,...: the weighted mean of the sources, accumulated in fp32 "
                         "(equal weights by default)", ".operations:average"),
    Operation("fuse_bn_weight", "a convolution's weight with the BatchNorm after it folded in (sources: conv "
                                "weight, [bn weight,] bn running_var; arg: EPS[,transposed,GROUPS][,noaffine])",
              ".surgery.fuse:fused_weight"),
    Operation("fuse_bn_bias", "a convolution's bias with the BatchNorm after it folded in (sources: [conv bias,] "
                              "[bn weight, bn bias,] bn running_mean, bn running_var; arg: EPS[,nobias][,noaffine])",
              ".surgery.fuse:fused_bias"),
)}


def parse_operation(text: str) -> tuple[Operation, str | None]:
    name, sep, arg = text.partition(":")
    operation = OPERATIONS.get(name)
    if operation is None:
        raise MappingError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
    return operation, arg if sep else None


def run_operation(text: str, loaders: Sequence[Loader]) -> torch.Tensor:
    """Run the operation ``text`` (``name[:arg]``) on the sources the loaders read."""
    operation, arg = parse_operation(text)
    return operation.run(loaders, arg)


def average_weights(arg: str | None, count: int) -> list[float]:
    """The weights of ``average:W1,...``, normalised to sum to 1 (equal when not given)."""
    if not arg:
        return [1.0 / count] * count
    try:
        weights = [float(part) for part in arg.split(",")]
    except ValueError:
        raise MappingError(f"average weights {arg!r}: expected numbers separated by commas, e.g. 0.2,0.8") from None
    if len(weights) != count or sum(weights) <= 0 or any(w < 0 for w in weights):
        raise MappingError(f"average weights {arg!r}: need {count} non-negative numbers with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def average(loaders: Sequence[Loader], arg: str | None) -> torch.Tensor:
    """The weighted mean, accumulated in fp32 (fp64 sources in fp64), one source in memory at a time."""
    import torch

    total: torch.Tensor | None = None
    for weight, load in zip(average_weights(arg, len(loaders)), loaders):
        tensor = load()
        wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        if total is None:
            total = tensor.to(wide, copy=True).mul_(weight)
        else:   # an fp32 source is added without a scaled copy of it
            total.add_(tensor if tensor.dtype == wide else tensor.to(wide), alpha=weight)
        del tensor
    if total is None:
        raise MappingError("average of no tensors")
    return total
