"""The package's own exceptions. Messages name the file, the key, both shapes, and the fix."""

from __future__ import annotations

from typing import Any


class SurgeonError(Exception):
    """Base class: anything the user can act on. The CLI prints it as one line and exits 2."""

    exit_code = 2


class CheckpointFormatError(SurgeonError):
    """A file that is not a readable checkpoint, or holds no tensors."""


class ContainerError(SurgeonError):
    """A container (``model``, ``ema``, ``state_dict`` ...) that is missing or holds no tensors."""


class MappingError(SurgeonError):
    """A bad rename rule, pattern or matching option."""


class ShapeError(SurgeonError):
    """A tensor whose shape cannot be used where it was asked to go."""


class RecipeError(SurgeonError):
    """A bad recipe file or field."""


class ModelBuildError(SurgeonError):
    """A ``--model module:callable`` that cannot be imported or built."""


class OutputError(SurgeonError):
    """An output that would overwrite an input or an existing file."""


class GateFailed(SurgeonError):
    """A ``--strict`` or ``--min-coverage`` gate failed; reports are written, the output is not.
    ``report`` is the transfer's Report (the plan that failed), set where the gate is checked."""

    exit_code = 3
    report: Any = None


class LimitError(CheckpointFormatError):
    """A file that would cost more than a reading limit allows (nesting, objects, visits, bytes, header)."""


class OptionError(SurgeonError):
    """An option value that cannot be used (e.g. ``--atol nan``)."""


class ProbeError(SurgeonError):
    """A module that does not exist or is not called, bad input shapes, or a forward that fails on every
    device tried (the message names the innermost module that raised and the shapes it was given)."""
