"""Resize methods: pure functions that fit a source tensor into a target of another shape.

Each method is registered by name with a ``check`` over shapes only (planning never needs torch), an
``apply`` over tensors, and a ``covered`` over shapes that says how many target elements ``apply`` computes
from source values (the report counts those, not the whole grown tensor). Method texts are ``name`` or
``name:arg`` (``yolo_head:3``, ``pos_embed:1``). Every function returns a new tensor in the source's dtype
(fp16/bf16 maths run in float32) and never modifies its inputs. torch is imported inside the functions that
touch tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import MappingError, ShapeError
from .specs import format_shape

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Shape = tuple[int, ...]
MAX_PREFIX_TOKENS = 16
DEFAULT_ANCHORS = 3


@dataclass(frozen=True)
class ResizeMethod:
    """A named resize method.

    ``check(src_shape, dst_shape, arg)`` returns None when the method applies, else a short reason.
    ``apply(source, target_initial, arg)`` returns a new tensor of the target's shape in the source's dtype.
    ``covered(src_shape, dst_shape, arg)`` is how many of the target's elements ``apply`` computes from source
    values; the others keep the target's initial values (or the step's fill).
    ``arg`` describes the optional integer after ``:`` (None: the method takes no argument).
    """

    name: str
    summary: str
    check: Callable[[tuple[int, ...], tuple[int, ...], str | None], str | None]
    apply: Callable[["Tensor", "Tensor", str | None], "Tensor"]
    covered: Callable[[tuple[int, ...], tuple[int, ...], str | None], int]
    arg: str | None = None
    arg_min: int = 0


# --- shared helpers -----------------------------------------------------------------------------


def read_arg(name: str, arg: str | None) -> int | None:
    """The method argument as an int (None if absent); MappingError if the method takes none or it is bad."""
    method = RESIZE_METHODS[name]
    if arg is None:
        return None
    if method.arg is None:
        raise MappingError(f"resize method {name!r} takes no argument, got {name}:{arg}; use {name!r}")
    try:
        value = int(arg)
    except ValueError:
        value = None
    if value is None or value < method.arg_min:
        raise MappingError(f"resize method {name!r} takes {method.arg} (an integer >= {method.arg_min}),"
                           f" got {arg!r}; e.g. {name}:{max(method.arg_min, 1)}")
    return value


def require_fit(name: str, src: Sequence[int], dst: Sequence[int], reason: str | None) -> None:
    """Raise ShapeError naming the method and both shapes when ``reason`` says the method cannot apply."""
    if reason is None:
        return
    known = ", ".join(RESIZE_METHODS)
    raise ShapeError(f"resize method {name!r} cannot map {format_shape(tuple(src))} to "
                     f"{format_shape(tuple(dst))}: {reason}; choose another method ({known}) "
                     f"or let the target keep its initial values")


def _compute_dtype(tensor: "Tensor") -> "torch.dtype":
    import torch

    # Half precision loses too much in sums and interpolation; float64 stays as it is.
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _centre_slices(src: int, dst: int) -> tuple[slice, slice]:
    """(source slice, target slice) that line up the centres of two sizes with an even difference."""
    if dst >= src:
        start = (dst - src) // 2
        return slice(0, src), slice(start, start + src)
    start = (src - dst) // 2
    return slice(start, start + dst), slice(0, dst)


# --- slice_pad ----------------------------------------------------------------------------------


def check_slice_pad(src: Shape, dst: Shape, arg: str | None = None) -> str | None:
    if len(src) != len(dst):
        return f"slice_pad needs the same number of dims, got {len(src)} vs {len(dst)}"
    return None


def covered_overlap(src: Shape, dst: Shape, arg: str | None = None) -> int:
    """slice_pad and kernel: the overlapping block (centred for kernel) comes from the source."""
    return math.prod(min(a, b) for a, b in zip(src, dst))


def slice_pad(source: "Tensor", target: "Tensor") -> "Tensor":
    """Copy the overlapping block ``[:min(a, b)]`` of every dim; the rest keeps the target's values."""
    require_fit("slice_pad", source.shape, target.shape, check_slice_pad(source.shape, target.shape))
    out = target.detach().to(dtype=source.dtype, copy=True)
    region = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, target.shape))
    out[region] = source.detach()[region].to(out.device)
    return out


# --- in_channels --------------------------------------------------------------------------------


def check_in_channels(src: Shape, dst: Shape, arg: str | None = None) -> str | None:
    if len(src) != len(dst) or len(src) < 2:
        return f"in_channels needs two weights (out, in, ...) of the same rank, got {len(src)} vs {len(dst)} dims"
    if src[0] != dst[0]:
        return f"in_channels needs equal out channels, got {src[0]} vs {dst[0]}"
    if src[2:] != dst[2:]:
        return f"in_channels needs equal kernel sizes, got {format_shape(src[2:])} vs {format_shape(dst[2:])}"
    if src[1] == 0 and dst[1] > 0:
        return "in_channels needs at least one source input channel, got 0"
    return None


def covered_whole(src: Shape, dst: Shape, arg: str | None = None) -> int:
    """in_channels and pos_embed: every target element is computed from source values."""
    return math.prod(dst)


def adapt_in_channels(source: "Tensor", in_channels: int) -> "Tensor":
    """Fit a weight (out, in, *k) to ``in_channels`` inputs.

    One input channel: the sum over the source channels (a grey image fed to an RGB conv). Otherwise the
    source channels repeat cyclically up to ``in_channels`` and are scaled by ``src_in / in_channels``, so
    an input whose channels repeat the source's channels gives the source's response (exactly when
    ``in_channels`` is a multiple of ``src_in``).
    """
    dst_shape = (source.shape[0], in_channels, *source.shape[2:])
    require_fit("in_channels", source.shape, dst_shape, check_in_channels(tuple(source.shape), dst_shape))
    weight = source.detach().to(_compute_dtype(source))
    src_in = source.shape[1]
    if in_channels == 1:
        out = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_channels // max(src_in, 1))
        out = weight.repeat(1, repeats, *([1] * (weight.dim() - 2)))[:, :in_channels]
        out = out * (src_in / max(in_channels, 1))
    return out.to(source.dtype)


# --- pos_embed ----------------------------------------------------------------------------------


def infer_prefix_tokens(n_src: int, n_dst: int) -> int | None:
    """The smallest p <= 16 leaving a square grid on both sides, or None."""
    for prefix in range(MAX_PREFIX_TOKENS + 1):
        if _is_square(n_src - prefix) and _is_square(n_dst - prefix):
            return prefix
    return None


def check_pos_embed(src: Shape, dst: Shape, arg: str | None = None) -> str | None:
    if len(src) != len(dst) or len(src) not in (2, 3) or (len(src) == 3 and (src[0], dst[0]) != (1, 1)):
        return f"pos_embed needs (1, N, D) or (N, D) on both sides, got {format_shape(src)} vs {format_shape(dst)}"
    if src[-1] != dst[-1]:
        return f"pos_embed needs equal embedding dims, got {src[-1]} vs {dst[-1]}"
    n_src, n_dst = src[-2], dst[-2]
    prefix = read_arg("pos_embed", arg)
    if prefix is None:
        if infer_prefix_tokens(n_src, n_dst) is None:
            return (f"pos_embed found no prefix count 0..{MAX_PREFIX_TOKENS} leaving square grids in "
                    f"{n_src} and {n_dst} tokens; give it as pos_embed:N")
    elif not (_is_square(n_src - prefix) and _is_square(n_dst - prefix)):
        return (f"pos_embed with {prefix} prefix tokens leaves {n_src - prefix} and {n_dst - prefix} tokens,"
                f" not both square grids")
    return None


def resample_pos_embed(source: "Tensor", num_tokens: int, *, num_prefix_tokens: int | None = None) -> "Tensor":
    """Resample a ViT position embedding (1, N, D) or (N, D) to ``num_tokens`` tokens.

    The first ``num_prefix_tokens`` (class/distillation/register tokens; inferred when None) are kept
    bit-exact; the square grid after them is interpolated bicubically (antialiased when shrinking).
    """
    import torch
    import torch.nn.functional as F

    shape = tuple(source.shape)
    dst_shape = (*shape[:-2], num_tokens, shape[-1])
    arg = None if num_prefix_tokens is None else str(num_prefix_tokens)
    require_fit("pos_embed", shape, dst_shape, check_pos_embed(shape, dst_shape, arg))
    n_src, dim = shape[-2], shape[-1]
    prefix = num_prefix_tokens if num_prefix_tokens is not None else infer_prefix_tokens(n_src, num_tokens)
    assert prefix is not None   # require_fit refused shapes without a prefix count that leaves square grids
    tokens = source.detach().reshape(1, n_src, dim)
    old, new = math.isqrt(n_src - prefix), math.isqrt(num_tokens - prefix)
    grid = tokens[:, prefix:].to(_compute_dtype(source)).reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False, antialias=new < old)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(source.dtype)
    return torch.cat([tokens[:, :prefix], grid], dim=1).reshape(dst_shape)


# --- yolo_head ----------------------------------------------------------------------------------


def check_yolo_head(src: Shape, dst: Shape, arg: str | None = None) -> str | None:
    anchors = read_arg("yolo_head", arg) or DEFAULT_ANCHORS
    if len(src) != len(dst) or not src:
        return f"yolo_head needs a weight or bias of the same rank on both sides, got {len(src)} vs {len(dst)} dims"
    if src[1:] != dst[1:]:
        return (f"yolo_head needs equal input channels and kernel dims, got {format_shape(src[1:])} vs "
                f"{format_shape(dst[1:])}")
    for rows in (src[0], dst[0]):
        if rows % anchors or rows // anchors <= 5:
            return f"yolo_head needs {anchors} anchors x (5 + classes) rows with classes >= 1, got {rows} rows"
    return None


def covered_yolo_head(src: Shape, dst: Shape, arg: str | None = None) -> int:
    """Per anchor, the 5 box/objectness rows and the shared class rows come from the source."""
    anchors = read_arg("yolo_head", arg) or DEFAULT_ANCHORS
    return anchors * min(src[0] // anchors, dst[0] // anchors) * math.prod(dst[1:])


def resize_yolo_head(source: "Tensor", target: "Tensor", num_anchors: int = DEFAULT_ANCHORS) -> "Tensor":
    """Map a YOLO head laid out as anchors x (box 4, objectness 1, classes) rows to another class count.

    Per anchor the 5 box/objectness rows and the first min(old, new) class rows are copied to the new
    per-anchor offsets; rows of new classes keep the target's values.
    """
    src, dst = tuple(source.shape), tuple(target.shape)
    require_fit("yolo_head", src, dst, check_yolo_head(src, dst, str(num_anchors)))
    out = target.detach().to(dtype=source.dtype, copy=True)
    per_src, per_dst = src[0] // num_anchors, dst[0] // num_anchors
    keep = min(per_src, per_dst)
    rows_in = source.detach().reshape(num_anchors, per_src, *src[1:])
    out.view(num_anchors, per_dst, *dst[1:])[:, :keep] = rows_in[:, :keep].to(out.device)
    return out


# --- kernel -------------------------------------------------------------------------------------


def check_kernel(src: Shape, dst: Shape, arg: str | None = None) -> str | None:
    if len(src) != len(dst) or len(src) < 3:
        return f"kernel needs conv weights (out, in, *k) of the same rank, got {len(src)} vs {len(dst)} dims"
    if src[:2] != dst[:2]:
        return f"kernel needs equal (out, in) channels, got {format_shape(src[:2])} vs {format_shape(dst[:2])}"
    for a, b in zip(src[2:], dst[2:]):
        if (a - b) % 2:
            return f"kernel size {a} -> {b} changes by an odd amount, so there is no common centre"
    return None


def resize_kernel(source: "Tensor", kernel_size: Sequence[int]) -> "Tensor":
    """Centre-pad a conv kernel with zeros (3x3 -> 5x5 computes the same function with padding + 1)
    or centre-crop it, to ``kernel_size`` (the dims after (out, in))."""
    src = tuple(source.shape)
    dst = (*src[:2], *kernel_size)
    require_fit("kernel", src, dst, check_kernel(src, dst))
    out = source.detach().new_zeros(dst)
    pairs = [_centre_slices(a, b) for a, b in zip(src[2:], dst[2:])]
    keep = (slice(None), slice(None))
    out[keep + tuple(p[1] for p in pairs)] = source.detach()[keep + tuple(p[0] for p in pairs)]
    return out


# --- registry -----------------------------------------------------------------------------------


def _apply_slice_pad(source: "Tensor", target: "Tensor", arg: str | None) -> "Tensor":
    return slice_pad(source, target)


def _apply_in_channels(source: "Tensor", target: "Tensor", arg: str | None) -> "Tensor":
    return adapt_in_channels(source, target.shape[1])


def _apply_pos_embed(source: "Tensor", target: "Tensor", arg: str | None) -> "Tensor":
    return resample_pos_embed(source, target.shape[-2], num_prefix_tokens=read_arg("pos_embed", arg))


def _apply_yolo_head(source: "Tensor", target: "Tensor", arg: str | None) -> "Tensor":
    return resize_yolo_head(source, target, read_arg("yolo_head", arg) or DEFAULT_ANCHORS)


def _apply_kernel(source: "Tensor", target: "Tensor", arg: str | None) -> "Tensor":
    return resize_kernel(source, tuple(target.shape[2:]))


RESIZE_METHODS: dict[str, ResizeMethod] = {m.name: m for m in (
    ResizeMethod("slice_pad", "copy the overlapping block; the rest keeps the target's values",
                 check_slice_pad, _apply_slice_pad, covered_overlap),
    ResizeMethod("in_channels", "conv input channels: sum to 1, or repeat cyclically and scale",
                 check_in_channels, _apply_in_channels, covered_whole),
    ResizeMethod("pos_embed", "ViT position embedding: bicubic grid resample, prefix tokens kept",
                 check_pos_embed, _apply_pos_embed, covered_whole, arg="the number of prefix tokens",
                 arg_min=0),
    ResizeMethod("yolo_head", "YOLO head: keep box/objectness and shared class rows per anchor",
                 check_yolo_head, _apply_yolo_head, covered_yolo_head, arg="the number of anchors", arg_min=1),
    ResizeMethod("kernel", "conv kernel size: centre zero-pad or centre crop",
                 check_kernel, _apply_kernel, covered_overlap),
)}


def parse_method(text: str) -> tuple[str, str | None]:
    """``"yolo_head:3"`` -> ``("yolo_head", "3")``; ``"slice_pad"`` -> ``("slice_pad", None)``.

    Raises MappingError for an unknown name or an argument the method does not take.
    """
    name, sep, arg = text.strip().partition(":")
    name = name.strip()
    if name not in RESIZE_METHODS:
        raise MappingError(f"unknown resize method {name!r} in {text!r}; known: {', '.join(RESIZE_METHODS)}")
    value = arg.strip() if sep else None
    read_arg(name, value)
    return name, value


# The most specific first: a method that fits only some shapes says more than slice_pad, which fits any.
_SUGGESTED = ("pos_embed", "in_channels", "kernel", "slice_pad")


def suggest_resize(src_shape: Sequence[int], dst_shape: Sequence[int]) -> str | None:
    """The resize method to suggest for a shape mismatch (the most specific that applies), or None."""
    return next((name for name in _SUGGESTED
                 if RESIZE_METHODS[name].check(tuple(src_shape), tuple(dst_shape), None) is None), None)


def can_resize(text: str, src_shape: Sequence[int], dst_shape: Sequence[int]) -> str | None:
    """Why method ``text`` cannot map ``src_shape`` to ``dst_shape``, or None if it can. Pure."""
    name, arg = parse_method(text)
    return RESIZE_METHODS[name].check(tuple(src_shape), tuple(dst_shape), arg)


def elements_from_source(text: str, src_shape: Sequence[int], dst_shape: Sequence[int]) -> int:
    """How many of the target's elements method ``text`` fills from source values. Pure (shapes only).

    A class head grown from 1000 to 5000 rows by ``slice_pad`` takes 1000 rows from the source, not 5000.
    """
    name, arg = parse_method(text)
    return RESIZE_METHODS[name].covered(tuple(src_shape), tuple(dst_shape), arg)


def resize_tensor(text: str, source: "Tensor", target: "Tensor") -> "Tensor":
    """Apply method ``text`` to ``source``, with ``target`` holding the initial values of the new tensor.

    Returns a new tensor of the target's shape in the source's dtype; ShapeError when the check fails.
    """
    name, arg = parse_method(text)
    src, dst = tuple(source.shape), tuple(target.shape)
    require_fit(name, src, dst, RESIZE_METHODS[name].check(src, dst, arg))
    return RESIZE_METHODS[name].apply(source, target, arg)
