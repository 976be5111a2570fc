"""After ``fuse-bn`` wrote its output: how close each fused conv is to conv + BatchNorm, and the fused model.

The check runs per pair, not through the whole model, so it needs no input shape and no working forward:
a random input (seeded) with the conv's input channels and a small spatial size (at least the kernel's reach
plus 2, and 6) goes through the conv with the input checkpoint's tensors then BatchNorm in eval mode
(``F.batch_norm`` with the running statistics), and through the conv with the output's fused tensors, both in
float32 (float64 for a float64 conv): the fold's error is far below that rounding's effect on the figure. With a model the conv is a copy of the live module (stride, padding, dilation, groups as built);
without one it is a plain conv built from the weight's shape (the fold is per output channel, so groups=1 and
no padding check it as well). The figure is ``max |fused - reference| / max |reference|``.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..errors import MappingError
from ..io import open_checkpoint
from ..plan import COMPUTE
from .fuse_pairs import FusePair

SPATIAL = 6


def check_fused(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], pairs: Sequence[FusePair], *,
                model: nn.Module | None = None, container: str | None = None, trust: bool = False,
                seed: int = 0) -> list[tuple[FusePair, float]]:
    """(pair, largest relative difference of the fused conv against conv+BN) for each pair; see the module."""
    modules = dict(model.named_modules()) if model is not None else {}
    generator = torch.Generator().manual_seed(seed)
    figures = []
    with open_checkpoint(in_path, container=container, trust=trust) as source, open_checkpoint(out_path) as fused:
        for pair in pairs:
            figures.append((pair, pair_difference(pair, source, fused, modules.get(pair.conv), generator)))
    return figures


def pair_difference(pair: FusePair, source: Mapping[str, Any], fused: Mapping[str, Any], live: nn.Module | None,
                    generator: torch.Generator) -> float:
    """``max |fused conv(x) - bn(conv(x))| / max |bn(conv(x))|`` on a random ``x`` (0 when both are 0)."""
    stored = source[f"{pair.conv}.weight"]   # present: checked when planning
    work = torch.float64 if stored.dtype == torch.float64 else torch.float32

    def read(state: Mapping[str, Any], key: str) -> torch.Tensor | None:
        return state[key].to(work) if key in state else None

    weight = stored.to(work)
    conv = _conv_like(pair, weight, live)
    x = torch.randn(2, _in_channels(conv), *_spatial(conv), generator=generator, dtype=work)
    with torch.no_grad():
        _set(conv, weight, read(source, f"{pair.conv}.bias"))
        mean, var, gamma, beta = (read(source, f"{pair.bn}.{leaf}") for leaf in ("running_mean", "running_var",
                                                                                "weight", "bias"))
        reference = F.batch_norm(conv(x), mean, var, gamma, beta, training=False, momentum=0.0, eps=pair.eps)
        _set(conv, fused[f"{pair.conv}.weight"].to(work), read(fused, f"{pair.conv}.bias"))
        delta = float((conv(x) - reference).abs().max())
    scale = float(reference.abs().max())
    return delta / scale if scale else delta


def _conv_like(pair: FusePair, weight: torch.Tensor, live: nn.Module | None) -> _ConvNd:
    if isinstance(live, _ConvNd):
        return copy.deepcopy(live).to(weight.dtype)   # the live module's stride, padding, groups
    kinds: tuple[type[_ConvNd], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) \
        if pair.transposed else (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    kind: Any = kinds[weight.dim() - 3]
    kernel = tuple(weight.shape[2:])
    if pair.transposed:
        conv: _ConvNd = kind(weight.shape[0], weight.shape[1] * pair.groups, kernel, groups=pair.groups, device="meta")
    else:   # the fold is per output channel: groups=1 checks a grouped conv's weights as well
        conv = kind(weight.shape[1], weight.shape[0], kernel, device="meta")
    return conv


def _in_channels(conv: _ConvNd) -> int:
    return conv.in_channels


def _spatial(conv: _ConvNd) -> list[int]:
    reach = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    return [max(SPATIAL, r + 2) for r in reach]


def _set(conv: _ConvNd, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None


def fused_pairs(report_or_plan: Any) -> list[tuple[str, str]]:
    """(conv, bn) module names of every pair a ``fuse-bn`` report (or plan) fused, read off its compute steps."""
    plan = getattr(report_or_plan, "plan", report_or_plan)
    return [(step.target.rpartition(".")[0], step.sources[-1][1].rpartition(".")[0]) for step in plan.steps
            if step.action == COMPUTE and (step.method or "").startswith("fuse_bn_weight")]


def to_fused_model(model: nn.Module, pairs: Any) -> nn.Module:
    """Make ``model`` take a ``fuse-bn`` output with ``strict=True``: each fused BatchNorm becomes ``nn.Identity``,
    each fused conv without a bias gets one (zeros). Changes ``model`` in place and returns it.

    ``pairs`` is the fuse-bn Report (or its plan), or ``(conv, bn)`` names / FusePairs.
    """
    names = fused_pairs(pairs) if hasattr(pairs, "plan") or hasattr(pairs, "steps") else \
        [(pair[0], pair[1]) for pair in pairs]
    for conv_name, bn_name in names:
        conv = model.get_submodule(conv_name)
        if not isinstance(conv, _ConvNd):
            raise MappingError(f"{conv_name} is a {type(conv).__name__}, not a convolution: give this model's pairs")
        if conv.bias is None:
            weight = conv.weight
            channels = weight.shape[1] * conv.groups if conv.transposed else weight.shape[0]
            conv.bias = nn.Parameter(torch.zeros(channels, dtype=weight.dtype, device=weight.device),
                                     requires_grad=weight.requires_grad)
        parent, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    return model
