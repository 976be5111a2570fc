"""``fuse-bn``: fold each BatchNorm into the convolution before it, for deployment (RepVGG's ``switch_to_deploy``).

Per output channel ``c``, with ``s = gamma / sqrt(running_var + eps)`` (gamma 1 and beta 0 without affine)::

    W'[c] = W[c] * s[c]                     b'[c] = (b[c] - running_mean[c]) * s[c] + beta[c]   (b = 0 if none)

For a conv the output channel is dim 0 of the weight (grouped and depthwise too); a ConvTranspose's weight is
``(in, out/groups, k...)``, so output channel ``c`` of group ``g`` is dim-1 index ``c - g*out/groups`` of the
rows ``g*in/groups .. (g+1)*in/groups``. The plan gives each conv's ``weight`` and ``bias`` a compute step
(operations ``fuse_bn_weight`` and ``fuse_bn_bias``: scales in float64, written in the conv's dtype),
leaves the BatchNorm's keys out, and copies everything else. The operation argument is
``EPS[,transposed,GROUPS][,nobias][,noaffine]``: the sources are the conv weight (``fuse_bn_weight``) or bias
(``fuse_bn_bias``, unless ``nobias``), the BatchNorm's ``weight`` and ``bias`` (unless ``noaffine``; only
``weight`` for the weight), ``running_mean`` (bias only) and ``running_var``.

The output loads into the model once each fused BatchNorm is ``nn.Identity`` and each fused conv has a bias:
:func:`~.fuse_check.to_fused_model` does both.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence, Unpack

from ..errors import MappingError, ShapeError
from ..plan import COMPUTE, Plan, ReasonKind, Step, Unused
from ..specs import FLOATING, TensorSpec, format_shape
from .fuse_pairs import FusePair, Pairing, pair_from_model, parse_pairs, read_pairs_file, unlisted_batchnorms
from .run import OutputOptions, copy_step, run_surgery

if TYPE_CHECKING:
    import torch

    from ..operations import Loader
    from ..report import Report

FUSED = "fused into the conv before it"
LOADING_NOTE = ("OUT loads (strict=True) into the model once each fused BatchNorm is nn.Identity and each fused conv "
                "has a bias (bias=True): ckptsurgeon.surgery.fuse_check.to_fused_model(model, report) does both")


class FuseArg(NamedTuple):
    """The parsed argument of ``fuse_bn_weight`` / ``fuse_bn_bias``."""

    eps: float
    transposed: bool = False
    groups: int = 1
    conv_bias: bool = True
    affine: bool = True


def format_fuse_arg(pair: FusePair, *, conv_bias: bool = True, affine: bool = True, weight: bool = True) -> str:
    """``1e-05``, ``0.001,transposed,2,noaffine``, ``1e-05,nobias``: the argument a plan step names."""
    parts = [repr(float(pair.eps))]
    parts += ["transposed", str(pair.groups)] if weight and pair.transposed else []
    parts += [] if conv_bias or weight else ["nobias"]
    parts += [] if affine else ["noaffine"]
    return ",".join(parts)


def parse_fuse_arg(arg: str | None) -> FuseArg:
    """The inverse of :func:`format_fuse_arg`."""
    tokens = (arg or "").split(",")
    try:
        parsed = FuseArg(float(tokens[0]))
        rest = iter(tokens[1:])
        for token in rest:
            if token == "transposed":
                parsed = parsed._replace(transposed=True, groups=int(next(rest)))
            elif token in ("nobias", "noaffine"):
                parsed = parsed._replace(**{"conv_bias" if token == "nobias" else "affine": False})
            else:
                raise ValueError(token)
    except (ValueError, StopIteration):
        raise MappingError(f"fuse_bn argument {arg!r}: expected EPS[,transposed,GROUPS][,nobias][,noaffine], "
                           f"e.g. 1e-05 (a damaged plan)") from None
    return parsed


def scale_output_channels(weight: torch.Tensor, scale: torch.Tensor, *, transposed: bool = False,
                          groups: int = 1) -> torch.Tensor:
    """``weight`` with each output channel ``c`` multiplied by ``scale[c]`` (a conv's, or a ConvTranspose's)."""
    if not transposed:
        return weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
    c_in, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, c_in // groups, per_group, *weight.shape[2:])
    factors = scale.reshape(groups, 1, per_group, *[1] * (weight.dim() - 2))
    return (grouped * factors).reshape(weight.shape)


def _loaded(loaders: Sequence[Loader], arg: FuseArg, expected: int,
            what: str) -> tuple[list[torch.Tensor], torch.dtype]:
    """The sources as read, and the dtype to compute the result in: float32, or float64 for a float64 first
    source (the BatchNorm vectors, small, are combined in float64 first)."""
    import torch

    if len(loaders) != expected:
        raise MappingError(f"{what}: {len(loaders)} sources for argument {arg}, expected {expected} (a damaged plan)")
    tensors = [load() for load in loaders]
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return tensors, dtype


def _wide(tensor: torch.Tensor | float) -> torch.Tensor | float:
    return tensor.double() if not isinstance(tensor, float) else tensor


def fused_weight(loaders: Sequence[Loader], arg: str | None) -> torch.Tensor:
    """Operation ``fuse_bn_weight``: sources conv weight, [bn weight,] bn running_var. The per-channel scale
    is computed in float64; the weight is scaled in float32 (float64 for a float64 conv), in which it is
    returned: one rounding of the product, no float64 copy of a large weight."""
    parsed = parse_fuse_arg(arg)
    tensors, dtype = _loaded(loaders, parsed, 3 if parsed.affine else 2, "fuse_bn_weight")
    weight, var = tensors[0], tensors[-1].double()
    scale = _wide(tensors[1] if parsed.affine else 1.0) / (var + parsed.eps).sqrt()
    return scale_output_channels(weight.to(dtype), scale.to(dtype), transposed=parsed.transposed,
                                 groups=parsed.groups)


def fused_bias(loaders: Sequence[Loader], arg: str | None) -> torch.Tensor:
    """Operation ``fuse_bn_bias``: sources [conv bias,] [bn weight, bn bias,] bn running_mean, bn running_var
    (vectors: computed in float64, returned in float32, float64 for a float64 first source)."""
    parsed = parse_fuse_arg(arg)
    tensors, dtype = _loaded(loaders, parsed, 2 + parsed.conv_bias + 2 * parsed.affine, "fuse_bn_bias")
    wide = [tensor.double() for tensor in tensors]
    bias = wide.pop(0) if parsed.conv_bias else 0.0
    gamma, beta = (wide[0], wide[1]) if parsed.affine else (1.0, 0.0)
    mean, var = wide[-2], wide[-1]
    return ((bias - mean) * (gamma / (var + parsed.eps).sqrt()) + beta).to(dtype)


def check_pair(pair: FusePair, specs: Mapping[str, TensorSpec]) -> None:
    """Refuse a pair whose keys are missing or whose shapes do not fit (naming both keys and shapes)."""
    weight = _spec(specs, f"{pair.conv}.weight", pair, "conv")
    mean = _spec(specs, f"{pair.bn}.running_mean", pair, "bn")
    var = _spec(specs, f"{pair.bn}.running_var", pair, "bn")
    if len(weight.shape) < 3 or weight.dtype not in FLOATING:
        raise ShapeError(f"{weight.name} is {format_shape(weight.shape)} {weight.dtype}, not a floating-point "
                         f"convolution weight (out, in/groups, k...); check the pair {pair.conv} + {pair.bn}")
    if pair.transposed and weight.shape[0] % pair.groups:
        raise ShapeError(f"{weight.name} is {format_shape(weight.shape)}: {weight.shape[0]} input channels do not "
                         f"split into groups={pair.groups}; check the pair's groups")
    channels = weight.shape[1] * pair.groups if pair.transposed else weight.shape[0]
    which = "dim 1 x groups" if pair.transposed else "dim 0"
    for key in (mean.name, var.name, f"{pair.bn}.weight", f"{pair.bn}.bias", f"{pair.conv}.bias"):
        if key in specs and specs[key].shape != (channels,):
            raise ShapeError(f"{weight.name} is {format_shape(weight.shape)} ({channels} output channels, {which}) "
                             f"but {key} is {format_shape(specs[key].shape)}: {pair.conv} and {pair.bn} do not "
                             f"pair (channels must match); fix the pair, or its transposed/groups")
    if (f"{pair.bn}.weight" in specs) != (f"{pair.bn}.bias" in specs):
        raise MappingError(f"{pair.bn}: has only one of weight and bias; an affine BatchNorm has both")


def _spec(specs: Mapping[str, TensorSpec], key: str, pair: FusePair, role: str) -> TensorSpec:
    if key not in specs:
        module = pair.conv if role == "conv" else pair.bn
        near = sorted(name for name in specs if name.startswith(f"{module}."))
        raise MappingError(f"{role} {module!r} (pair {pair.conv} + {pair.bn}): the checkpoint has no {key} "
                           f"(its keys under {module}.: {', '.join(near) or 'none'}); check the pair's names, that IN "
                           f"is a checkpoint of --model, or --container")
    return specs[key]


def fuse_plan(specs: Mapping[str, TensorSpec], pairing: Pairing) -> Plan:
    """The plan of fusing ``pairing``'s pairs in a checkpoint of ``specs``: conv weight and bias computed, the
    BatchNorm's keys left out, the rest copied; notes list every pair and every unfused BatchNorm."""
    for pair in pairing.pairs:
        check_pair(pair, specs)
    by_conv = {f"{pair.conv}.weight": pair for pair in pairing.pairs}
    fused_bns = {pair.bn: pair for pair in pairing.pairs}
    why = {unfused.bn: unfused.reason for unfused in pairing.unfused}
    fused_biases = {f"{pair.conv}.bias" for pair in pairing.pairs}
    steps: list[Step] = []
    unused: list[Unused] = []
    for name, spec in specs.items():
        module = name.rpartition(".")[0]
        if module in fused_bns:
            unused.append(Unused(name, spec.shape, spec.dtype, FUSED, "", place=f"{fused_bns[module].conv}.weight"))
        elif name in by_conv:
            steps += _fused_steps(by_conv[name], spec, specs)
        elif name not in fused_biases:
            reason = f"BatchNorm left unfused: {why[module]}" if module in why else "unchanged"
            steps.append(copy_step(name, spec, reason=reason))
    notes = [pair_note(pair) for pair in pairing.pairs] + [f"{u.bn} left unfused: {u.reason}" for u in pairing.unfused]
    notes += [LOADING_NOTE] if pairing.pairs else ["nothing to fuse: no conv + BatchNorm pair found"]
    return Plan(tuple(steps), tuple(unused), notes=tuple(pairing.notes) + tuple(notes))


def _fused_steps(pair: FusePair, weight: TensorSpec, specs: Mapping[str, TensorSpec]) -> list[Step]:
    bias = specs.get(f"{pair.conv}.bias")
    affine = f"{pair.bn}.weight" in specs
    bn = [f"{pair.bn}.weight"] if affine else []
    why = f"{pair.bn} folded in"
    weight_step = Step(weight.name, COMPUTE, weight.shape, weight.dtype, weight.name, weight.shape, weight.dtype,
                       method=f"fuse_bn_weight:{format_fuse_arg(pair, affine=affine)}", reason=why,
                       operands=tuple((0, key) for key in [weight.name, *bn, f"{pair.bn}.running_var"]),
                       reason_kind=ReasonKind.OPERATION)
    keys = ([bias.name] if bias else []) + bn + ([f"{pair.bn}.bias"] if affine else []) + \
        [f"{pair.bn}.running_mean", f"{pair.bn}.running_var"]
    channels = weight.shape[1] * pair.groups if pair.transposed else weight.shape[0]
    arg = format_fuse_arg(pair, conv_bias=bias is not None, affine=affine, weight=False)
    bias_step = Step(f"{pair.conv}.bias", COMPUTE, (channels,), bias.dtype if bias else weight.dtype,
                     keys[0], specs[keys[0]].shape, specs[keys[0]].dtype, method=f"fuse_bn_bias:{arg}",
                     reason=why if bias else f"{why} (new: the conv had no bias)",
                     operands=tuple((0, key) for key in keys), reason_kind=ReasonKind.OPERATION)
    return [weight_step, bias_step]


def pair_note(pair: FusePair, difference: float | None = None) -> str:
    """``fused bn1 into conv1 (eps 1e-05)``, with the check's figure once known."""
    kind = f", ConvTranspose groups={pair.groups}" if pair.transposed else ""
    figure = "" if difference is None else f": largest relative difference {difference:.1e} against conv+BN"
    return f"fused {pair.bn} into {pair.conv} (eps {pair.eps:g}{kind}){figure}"


def fuse_bn(in_path: str | os.PathLike[str], out_path: str | None, *, model: Any = None,
            pairs: str | os.PathLike[str] | Sequence[Any] | None = None, eps: float | None = None,
            dry_run: bool = False, force: bool = False, container: str | None = None, trust: bool = False,
            seed: int = 0, **output: Unpack[OutputOptions]) -> Report:
    """Fold each BatchNorm of ``in_path`` into the conv before it and write ``out_path`` (checked, atomic).

    Args:
        model: a live ``nn.Module`` of the checkpoint's architecture: pairs from its torch.fx trace (or its
            ``nn.Sequential`` order when tracing fails), eps from each BatchNorm.
        pairs: instead of ``model``: a JSON pairs file, or a list of ``(conv, bn)`` pairs or FusePairs.
        eps: the eps of pairs that give none (``pairs`` only; default 1e-5).
        seed: of the random inputs of the check run after writing.

    Returns:
        The Report; its notes list every fused pair with the largest relative difference of the fused conv
        against conv+BN (eval mode) on a random input, and every BatchNorm left unfused with why.
    """
    if (model is None) == (pairs is None):
        raise MappingError("fuse-bn: give the pairs as either a model (--model) or a pairs file (--pairs)")
    if model is not None and eps is not None:
        raise MappingError("fuse-bn: eps applies to --pairs; with a model each BatchNorm's own eps is used")
    if model is not None:
        pairing = pair_from_model(model)
    elif isinstance(pairs, (str, os.PathLike)):
        pairing = Pairing(read_pairs_file(pairs, eps=eps))
    else:
        pairing = Pairing(parse_pairs(pairs or (), eps=eps))

    def build(inputs: Sequence[Any]) -> Plan:
        specs = inputs[0].specs
        full = pairing if model is not None else dataclasses.replace(
            pairing, unfused=unlisted_batchnorms(specs, pairing.pairs))
        return fuse_plan(specs, full)

    report = run_surgery("fuse-bn", [in_path], build, out_path, dry_run=dry_run, force=force, container=container,
                         trust=trust, **output)
    if not report.applied or out_path is None:
        return report
    from .fuse_check import check_fused

    figures = check_fused(in_path, out_path, pairing.pairs, model=model, container=container, trust=trust, seed=seed)
    checked = {pair_note(pair): pair_note(pair, figure) for pair, figure in figures}
    notes = tuple(checked.get(note, note) for note in report.plan.notes)
    summary = check_summary(figures, report.plan)
    return dataclasses.replace(report, plan=dataclasses.replace(report.plan, notes=summary + notes))


def check_summary(figures: Sequence[tuple[FusePair, float]], plan: Plan) -> tuple[str, ...]:
    """One note on the whole check, and one per pair further off than its dtype explains (1e-4 for 32- and
    64-bit weights, 1e-2 for 16-bit)."""
    if not figures:
        return ()
    worst, largest = max(figures, key=lambda item: item[1])
    notes = [f"check: each fused conv against conv+BN in eval mode on a random input: largest relative difference "
             f"{largest:.1e} ({worst.conv})"]
    for pair, figure in figures:
        dtype = plan.step_for(f"{pair.conv}.weight").target_dtype
        tolerance = 1e-2 if dtype in ("float16", "bfloat16") else 1e-4
        if not figure <= tolerance:
            notes.append(f"{pair.conv}: the fused conv is {figure:.1e} off conv+BN (more than {tolerance:g} for "
                         f"{dtype}): check that {pair.bn} really follows {pair.conv}")
    return tuple(notes)
