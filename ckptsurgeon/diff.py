"""Comparing two checkpoints: keys on one side only, shape and dtype changes, and (opt-in) values."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import OptionError
from .io import open_checkpoint
from .specs import format_shape


@dataclass(frozen=True)
class KeyChange:
    name: str
    before: str
    after: str


@dataclass(frozen=True)
class CheckpointDiff:
    a: str
    b: str
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    shape_changed: tuple[KeyChange, ...]
    dtype_changed: tuple[KeyChange, ...]
    value_changed: tuple[tuple[str, float], ...]   # (key, max abs difference)
    values_compared: int

    @property
    def has_differences(self) -> bool:
        return bool(self.only_a or self.only_b or self.shape_changed or self.dtype_changed or self.value_changed)


def diff_checkpoints(a: str | os.PathLike[str], b: str | os.PathLike[str], *, values: bool = False,
                     atol: float = 0.0, container: str | None = None, trust: bool = False) -> CheckpointDiff:
    """Compare two checkpoints by key. With ``values``, tensors of equal shape are compared elementwise
    (max abs difference above ``atol`` counts as changed); only then is tensor data read. Bit-identical values
    (NaNs included) are equal; a NaN against anything else differs."""
    if not isinstance(atol, (int, float)) or math.isnan(atol) or atol < 0:
        raise OptionError(f"--atol {atol!r}: expected a number >= 0 (inf allowed), e.g. --atol 1e-6")
    with open_checkpoint(a, container=container, trust=trust) as left, \
            open_checkpoint(b, container=container, trust=trust) as right:
        common = [name for name in left.specs if name in right.specs]
        shapes = tuple(KeyChange(n, format_shape(left.specs[n].shape), format_shape(right.specs[n].shape))
                       for n in common if left.specs[n].shape != right.specs[n].shape)
        dtypes = tuple(KeyChange(n, left.specs[n].dtype, right.specs[n].dtype)
                       for n in common if left.specs[n].dtype != right.specs[n].dtype)
        same_shape = [n for n in common if left.specs[n].shape == right.specs[n].shape]
        changed = tuple(_value_changes(left, right, same_shape, atol)) if values else ()
        return CheckpointDiff(os.fspath(a), os.fspath(b),
                              tuple(n for n in left.specs if n not in right.specs),
                              tuple(n for n in right.specs if n not in left.specs),
                              shapes, dtypes, changed, len(same_shape) if values else 0)


def _value_changes(left: Any, right: Any, names: list[str], atol: float) -> list[tuple[str, float]]:
    from .values import value_gap

    out = []
    for name in names:
        delta, differing = value_gap(left[name], right[name])
        if differing and (delta > atol or delta != delta):  # NaN differs from everything but itself
            out.append((name, delta))
    return out


def render_diff(diff: CheckpointDiff) -> str:
    lines = [f"A: {diff.a}", f"B: {diff.b}"]
    sections = [
        (f"only in A ({len(diff.only_a)})", list(diff.only_a)),
        (f"only in B ({len(diff.only_b)})", list(diff.only_b)),
        (f"shape differs ({len(diff.shape_changed)})", [f"{c.name}: {c.before} -> {c.after}" for c in diff.shape_changed]),
        (f"dtype differs ({len(diff.dtype_changed)})", [f"{c.name}: {c.before} -> {c.after}" for c in diff.dtype_changed]),
        (f"values differ ({len(diff.value_changed)} of {diff.values_compared} compared)",
         [f"{name}: max abs diff {delta:.6g}" for name, delta in diff.value_changed]),
    ]
    for title, items in sections:
        if items:
            lines += ["", title] + [f"  {item}" for item in items]
    if not diff.has_differences:
        lines += ["", "no differences" + (f" ({diff.values_compared} tensors compared by value)" if diff.values_compared else "")]
    return "\n".join(lines)
