"""Tied weights: one parameter or buffer registered under several names (``lm_head.weight`` is
``embed.weight``). Plans feed every name of a group from one source; loading with ``assign=True`` unties
them, so they are tied again afterwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def retie(model: torch.nn.Module, groups: list[list[str]]) -> None:
    """Register one tensor under every name of each tied group again (the last one, as in-place loading
    leaves the value last written)."""
    for names in groups:
        *_, last = names
        prefix, _, leaf = last.rpartition(".")
        shared = getattr(model.get_submodule(prefix), leaf)
        for name in names[:-1]:
            prefix, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(prefix), leaf, shared)


def tied_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names under which one parameter or buffer is registered more than once (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, tensor in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        by_id.setdefault(id(tensor), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]
