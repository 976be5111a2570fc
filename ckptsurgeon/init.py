"""Named initialisers for new or resized tensors: ``zeros``, ``normal:0.01``, ``constant:0.5`` ...

By default a new tensor keeps the target's own initial values; these are for when a recipe asks for
something else. ``check_init`` is pure (shapes only) so planning stays torch-free. Random values are drawn
in float32 on the CPU from the given generator and then cast, so one seed gives the same values on every
device and (up to rounding) every dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import MappingError, ShapeError
from .specs import FLOATING, dtype_name, format_shape

if TYPE_CHECKING:
    import torch
    from torch import Tensor

DEFAULT_STD = 0.02
# A module-level initialiser (``--init 'feat*_att=identity'``): the plan names the module (``identity:feat1_att``)
# and applying it sets that module's tensors so it starts as the identity (see ckptsurgeon.model.identity).
IDENTITY = "identity"


@dataclass(frozen=True)
class Initializer:
    """A named initialiser.

    ``arg`` is ``"required"``, ``"optional"`` (then ``default`` applies) or None (takes no value).
    ``check(shape, value)`` gives a reason it cannot apply, or None; ``fill(tensor, value, generator)``
    fills a float32 CPU tensor in place.
    """

    name: str
    summary: str
    fill: Callable[["Tensor", float | None, "torch.Generator | None"], None]
    check: Callable[[tuple[int, ...]], str | None]
    describe: Callable[[float | None], str]
    arg: str | None = None
    default: float | None = None
    random: bool = False


def _given(value: float | None) -> float:
    """The value of an initialiser that takes one: parse_init requires it, or _value_of supplies the default."""
    assert value is not None
    return value


def _format_number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _check_any(shape: tuple[int, ...]) -> str | None:
    return None


def _check_matrix_like(name: str) -> Callable[[tuple[int, ...]], str | None]:
    def check(shape: tuple[int, ...]) -> str | None:
        if len(shape) < 2:
            return f"{name} needs at least 2 dims (fan in and fan out), got {format_shape(shape)}"
        return None
    return check


def _check_dirac(shape: tuple[int, ...]) -> str | None:
    if len(shape) == 2 and shape[0] == shape[1]:
        return None
    if 3 <= len(shape) <= 5:
        return None
    return f"dirac needs a square matrix or a conv weight with 3 to 5 dims, got {format_shape(shape)}"


def _fill_zeros(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    tensor.zero_()


def _fill_ones(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    tensor.fill_(1.0)


def _fill_constant(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    tensor.fill_(_given(value))


def _fill_normal(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    import torch

    torch.nn.init.normal_(tensor, mean=0.0, std=_given(value), generator=generator)


def _fill_kaiming(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    import torch

    torch.nn.init.kaiming_normal_(tensor, mode="fan_out", nonlinearity="relu", generator=generator)


def _fill_xavier(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    import torch

    torch.nn.init.xavier_uniform_(tensor, generator=generator)


def _fill_dirac(tensor: "Tensor", value: float | None, generator: "torch.Generator | None") -> None:
    import torch

    if tensor.dim() == 2:
        tensor.copy_(torch.eye(tensor.shape[0], dtype=tensor.dtype))
    else:
        torch.nn.init.dirac_(tensor)


INITIALIZERS: dict[str, Initializer] = {i.name: i for i in (
    Initializer("zeros", "all zeros", _fill_zeros, _check_any, lambda v: "zeros"),
    Initializer("ones", "all ones", _fill_ones, _check_any, lambda v: "ones"),
    Initializer("constant", "constant:VALUE, every element VALUE", _fill_constant, _check_any,
                lambda v: f"constant({_format_number(_given(v))})", arg="required"),
    Initializer("normal", f"normal:STD, mean 0 (std {DEFAULT_STD} by default)", _fill_normal, _check_any,
                lambda v: f"normal(std={_format_number(_given(v))})", arg="optional", default=DEFAULT_STD, random=True),
    Initializer("kaiming", "kaiming normal, fan_out, relu (2+ dims)", _fill_kaiming,
                _check_matrix_like("kaiming"), lambda v: "kaiming_normal(fan_out, relu)", random=True),
    Initializer("xavier", "xavier uniform (2+ dims)", _fill_xavier, _check_matrix_like("xavier"),
                lambda v: "xavier_uniform", random=True),
    Initializer("dirac", "identity: eye for square matrices, dirac for conv weights", _fill_dirac,
                _check_dirac, lambda v: "dirac(identity)"),
)}


def _read_value(name: str, text: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (name == "normal" and value < 0):
        need = "a std >= 0" if name == "normal" else "a finite number"
        raise MappingError(f"initializer {text!r} needs {need} after ':', got {raw!r}; e.g. {name}:0.02")
    return value


def parse_init(text: str) -> tuple[str, float | None]:
    """``"normal:0.01"`` -> ``("normal", 0.01)``; ``"zeros"`` -> ``("zeros", None)``.

    A missing optional value stays None (``describe_init``/``initialize`` use the default). Raises
    MappingError for an unknown name, a bad number, a missing required value or an unexpected one.
    """
    name, sep, raw = text.strip().partition(":")
    name = name.strip()
    if name == IDENTITY:
        return name, None   # its argument, set by the planner, is the module's path
    init = INITIALIZERS.get(name)
    if init is None:
        raise MappingError(f"unknown initializer {name!r} in {text!r}; known: {', '.join(INITIALIZERS)}, "
                           f"{IDENTITY} (for a module)")
    if not sep:
        if init.arg == "required":
            raise MappingError(f"initializer {name!r} needs a value, e.g. {name}:0.5")
        return name, None
    if init.arg is None:
        raise MappingError(f"initializer {name!r} takes no value, got {text!r}; use {name!r}")
    return name, _read_value(name, text, raw.strip())


def _value_of(name: str, value: float | None) -> float | None:
    return INITIALIZERS[name].default if value is None else value


def check_init(text: str, shape: tuple[int, ...], *, dtype: str | None = None) -> str | None:
    """Why initializer ``text`` cannot fill a tensor of ``shape`` (and ``dtype``, if given), or None. Pure.

    kaiming and xavier need a fan in and a fan out, so they refuse 1-D tensors (biases, norm weights):
    the caller decides what those get instead (their initial values, zeros, ...).
    """
    name, _ = parse_init(text)
    if name == IDENTITY:
        return None   # decided per module when applied, from its structure
    init = INITIALIZERS[name]
    if init.random and dtype is not None and dtype not in FLOATING:
        return f"{name} draws random values and needs a floating dtype, got {dtype}"
    return init.check(tuple(shape))


def describe_init(text: str) -> str:
    """Human text for reports: ``"normal(std=0.02)"``, ``"constant(0.5)"``, ``"zeros"``."""
    name, value = parse_init(text)
    if name == IDENTITY:
        module = text.partition(":")[2]
        return f"identity of its module {module}" if module else "identity of its module"
    return INITIALIZERS[name].describe(_value_of(name, value))


def initialize(text: str, like: "Tensor", generator: "torch.Generator | None" = None) -> "Tensor":
    """A new tensor with ``like``'s shape, dtype and device, filled by initializer ``text``.

    Random values come from ``generator`` (a CPU generator; None uses torch's global one), so the same
    seed gives the same values. ``like`` is not modified. Raises ShapeError when ``check_init`` refuses.
    """
    import torch

    shape = tuple(like.shape)
    reason = check_init(text, shape, dtype=dtype_name(like.dtype))
    if reason is not None:
        raise ShapeError(f"initializer {text!r} cannot fill a tensor of shape {format_shape(shape)}: "
                         f"{reason}; choose another initializer or keep the target's initial values")
    name, value = parse_init(text)
    values = torch.empty(shape, dtype=torch.float32)
    if values.numel() > 0:
        INITIALIZERS[name].fill(values, _value_of(name, value), generator)
    return values.to(device=like.device, dtype=like.dtype)
