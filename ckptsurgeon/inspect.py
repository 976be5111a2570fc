"""What a checkpoint or a live model holds: rows of name, shape, dtype, count, and warnings."""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Any, NamedTuple

from .errors import MappingError
from .io import CheckpointInfo, open_checkpoint
from .specs import TensorSpec, format_shape


class TensorRow(NamedTuple):
    spec: TensorSpec
    kind: str | None = None            # "parameter" / "buffer" where known
    requires_grad: bool | None = None  # live models (and pickled modules) only


class Inspection(NamedTuple):
    """One inspected source; ``rows`` are those the filter kept, ``total_tensors`` counts all."""

    source: str
    rows: tuple[TensorRow, ...]
    total_tensors: int
    info: CheckpointInfo | None = None
    pattern: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return sum(row.spec.numel for row in self.rows)

    @property
    def nbytes(self) -> int:
        return sum(row.spec.nbytes for row in self.rows)

    @property
    def kinds_known(self) -> bool:
        """Whether the source says which tensors are parameters and which buffers (live models, pickled
        modules); a plain state dict does not."""
        return any(row.kind for row in self.rows)

    @property
    def parameters(self) -> int:
        """Elements of parameters where the source says which tensors are parameters, else of all tensors."""
        if self.kinds_known:
            return sum(row.spec.numel for row in self.rows if row.kind == "parameter")
        return self.numel

    def bytes_by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.spec.dtype] = out.get(row.spec.dtype, 0) + row.spec.nbytes
        return out


def name_filter(pattern: str | None, *, regex: bool = False) -> Any:
    """A predicate over key names: a glob (``*conv1*``) or, with ``regex``, a regular expression (search)."""
    if pattern is None:
        return lambda name: True
    if regex:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise MappingError(f"--filter {pattern!r} is not a valid regular expression ({exc})") from exc
        return lambda name: compiled.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def degenerate_warnings(specs: list[TensorSpec]) -> list[str]:
    """Tensors with a zero-sized dimension: usually a layer built with 0 channels by mistake."""
    return [f"{spec.name} has shape {format_shape(spec.shape)}: a zero-sized dimension (e.g. an SE block with "
            f"fewer channels than its reduction), so this layer does nothing" for spec in specs if spec.is_degenerate]


def inspect_checkpoint(path: str | os.PathLike[str], *, container: str | None = None, trust: bool = False,
                       pattern: str | None = None, regex: bool = False) -> Inspection:
    """Inspect a checkpoint file; reads no tensor data."""
    keep = name_filter(pattern, regex=regex)
    with open_checkpoint(path, container=container, trust=trust) as checkpoint:
        module = checkpoint.info.container_kind == "module"
        rows = tuple(_checkpoint_row(checkpoint, name) if module else TensorRow(checkpoint.specs[name])
                     for name in checkpoint if keep(name))
        info, total = checkpoint.info, len(checkpoint)
    specs = [row.spec for row in rows]
    return Inspection(os.fspath(path), rows, total, info, pattern, tuple(degenerate_warnings(specs)))


def _checkpoint_row(checkpoint: Any, name: str) -> TensorRow:
    is_param = checkpoint.is_parameter(name)
    kind = None if is_param is None else ("parameter" if is_param else "buffer")
    return TensorRow(checkpoint.specs[name], kind, checkpoint.requires_grad(name))
