"""Inspecting a live ``nn.Module``: the same rows as a checkpoint's, with parameter/buffer and requires_grad."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..inspect import Inspection, TensorRow, degenerate_warnings, name_filter
from ..specs import spec_of

if TYPE_CHECKING:
    import torch


def inspect_model(model: torch.nn.Module, *, pattern: str | None = None, regex: bool = False, label: str = "model") -> Inspection:
    """Inspect a live ``nn.Module``: its state dict (parameters and persistent buffers) with ``requires_grad``."""
    import torch

    keep = name_filter(pattern, regex=regex)
    state = model.state_dict(keep_vars=True)
    rows = []
    for name, value in state.items():
        if not keep(name):
            continue
        is_param = isinstance(value, torch.nn.Parameter)
        rows.append(TensorRow(spec_of(name, value), "parameter" if is_param else "buffer",
                              bool(value.requires_grad) if is_param else None))
    specs = [row.spec for row in rows]
    return Inspection(label, tuple(rows), len(state), None, pattern, tuple(degenerate_warnings(specs)))
