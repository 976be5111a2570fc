"""Comparing two tensors' values in bounded memory (``diff --values``, ``merge``'s value conflicts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 22   # elements compared at a time: a few MiB beyond the two tensors


def value_gap(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """(largest ``|a - b|``, how many elements differ) of two tensors of one shape, chunk by chunk.

    NaN equals NaN and 0.0 equals -0.0; a NaN against a number is a NaN gap. Differences are taken in
    float64 (complex128 for complex tensors), whatever the dtypes.
    """
    import torch

    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    floating = a.is_floating_point() or a.is_complex() or b.is_floating_point() or b.is_complex()
    largest, differing = 0.0, 0
    for start in range(0, flat_a.numel(), CHUNK):
        x, y = flat_a[start:start + CHUNK], flat_b[start:start + CHUNK]
        unequal = x != y
        if floating:
            unequal &= ~(x.isnan() & y.isnan())
        count = int(unequal.sum())
        if count:
            differing += count
            gap = float((x[unequal].to(wide) - y[unequal].to(wide)).abs().max())
            largest = gap if gap != gap or largest != largest else max(largest, gap)
    return largest, differing
