"""Commands over several checkpoints: ``merge`` (the union of two state dicts) and ``average`` (the weighted
mean of N checkpoints: EMA, SWA, model soups).

Both plan from names, shapes and dtypes and run through :func:`.run.run_surgery` (checked, atomic, streamed).
Two things need tensor data before anything is written, so they happen while the plan is built:

* ``merge`` compares the values of every key the two inputs share with the same shape and dtype, one pair of
  tensors at a time (a dry run does not: it reads no tensor data, and says that value conflicts are found
  only when run);
* ``average`` needs none: its plan is one ``average`` compute step per floating key, naming every input.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence, Unpack

from ..errors import MappingError
from ..io import Checkpoint
from ..operations import average_weights
from ..plan import COMPUTE, Plan, ReasonKind, Step, Unused
from ..specs import FLOATING, TensorSpec, format_shape
from .run import OutputOptions, copy_step, run_surgery

if TYPE_CHECKING:
    from ..report import Report

Path = str | os.PathLike[str]
SIDES = ("a", "b")
SHOWN_DIFFERENCES = 3     # differing keys named per input when average refuses its inputs
SHOWN_CONFLICTS = 20      # conflicts listed as notes (every one is in its step's reason)
BN_STATISTICS = ("running_mean", "running_var")
IN_BOTH = "in both inputs"
CONFLICT = "conflict"


class Conflict(NamedTuple):
    """A key both inputs of a merge hold with another shape, dtype or value: ``what`` says which and how
    (``shape (3, 4) in a, (4, 4) in b``; ``values differ: max |a - b| = 0.5 (12 of 100 elements)``)."""

    key: str
    kind: str     # "shape", "dtype" or "value"
    what: str


class MergeConflictError(MappingError):
    """A merge whose inputs disagree on some keys and no ``prefer`` side; ``conflicts`` lists every one."""

    def __init__(self, conflicts: Sequence[Conflict], a: str, b: str) -> None:
        self.conflicts = tuple(conflicts)
        lines = [f"{c.key}: {c.what}" for c in self.conflicts[:SHOWN_CONFLICTS]]
        more = len(self.conflicts) - len(lines)
        lines += [f"... and {more} more"] if more else []
        n = len(self.conflicts)
        super().__init__(f"merge: {n} key{'s' if n != 1 else ''} conflict between a ({a}) and b ({b}); nothing "
                         f"written. Pass --prefer a or --prefer b (prefer='a'/'b') to take that side's tensor:\n  "
                         + "\n  ".join(lines))


def merge_checkpoints(a: Path, b: Path, out: str | None, *, prefer: str | None = None, dry_run: bool = False,
                      force: bool = False, container: str | None = None, trust: bool = False,
                      **output: Unpack[OutputOptions]) -> Report:
    """The union of two state dicts: ``a``'s keys in order, then ``b``'s keys ``a`` lacks.

    A key in both with another shape, dtype or value is a conflict: :class:`MergeConflictError` lists them
    all and nothing is written, unless ``prefer`` (``"a"`` or ``"b"``) names the side to take (then every
    key in both comes from that side and each conflict is still reported: the step's reason and a note).
    Values are compared one pair of tensors at a time; a dry run compares none (it reads no tensor data)
    and finds only shape and dtype conflicts. Returns the Report (inputs 0 and 1 are ``a`` and ``b``).
    """
    if prefer is not None and prefer not in SIDES:
        raise MappingError(f"merge: prefer={prefer!r}; expected 'a' or 'b'")
    taken = SIDES.index(prefer) if prefer else 0

    def build(inputs: Sequence[Checkpoint]) -> Plan:
        first, second = inputs
        conflicts = _spec_conflicts(first.specs, second.specs)
        shared = [name for name in first.specs if name in second.specs and name not in conflicts]
        if not dry_run:
            conflicts.update(_value_conflicts(first, second, shared))
            conflicts = {name: conflicts[name] for name in first.specs if name in conflicts}   # a's key order
        if conflicts and prefer is None:
            raise MergeConflictError(list(conflicts.values()), os.fspath(a), os.fspath(b))
        plan = _merge_plan(first.specs, second.specs, conflicts, taken)
        notes = [_conflict_note(c, prefer or "a") for c in list(conflicts.values())[:SHOWN_CONFLICTS]]
        if len(conflicts) > SHOWN_CONFLICTS:
            notes.append(f"and {len(conflicts) - SHOWN_CONFLICTS} more conflicts (each in its target's reason, --json)")
        if dry_run and shared:
            notes.append(f"{_plural(len(shared), 'key')} in both inputs with the same shape and dtype: value "
                         f"conflicts are found only when run (a dry run reads no tensor data)")
        return Plan(plan.steps, plan.unused, notes=tuple(notes))
    return run_surgery("merge", [a, b], build, out, dry_run=dry_run, force=force,
                       container=container, trust=trust, **output)


def _spec_conflicts(first: dict[str, TensorSpec], second: dict[str, TensorSpec]) -> dict[str, Conflict]:
    conflicts: dict[str, Conflict] = {}
    for name, spec in first.items():
        other = second.get(name)
        if other is None:
            continue
        if spec.shape != other.shape:
            conflicts[name] = Conflict(name, "shape", f"shape {format_shape(spec.shape)} in a, "
                                                      f"{format_shape(other.shape)} in b")
        elif spec.dtype != other.dtype:
            conflicts[name] = Conflict(name, "dtype", f"dtype {spec.dtype} in a, {other.dtype} in b")
    return conflicts


def _value_conflicts(first: Checkpoint, second: Checkpoint, names: Sequence[str]) -> dict[str, Conflict]:
    """Compare the shared keys' values, one pair of tensors in memory at a time."""
    conflicts: dict[str, Conflict] = {}
    for name in names:
        left, right = first.raw_bytes(name), second.raw_bytes(name)
        if left is not None and right is not None and left == right:
            continue   # the same bytes: equal without building a tensor
        difference = describe_difference(first[name], second[name])
        if difference is not None:
            conflicts[name] = Conflict(name, "value", difference)
    return conflicts


def describe_difference(a: Any, b: Any) -> str | None:
    """None when two tensors of one shape and dtype hold the same values (NaN equal to NaN, 0.0 to -0.0),
    else ``values differ: max |a - b| = 0.5 (12 of 100 elements)``; compared in chunks
    (:func:`~ckptsurgeon.values.value_gap`), so little memory beyond the two inputs."""
    from ..values import value_gap

    largest, differing = value_gap(a, b)
    if not differing:
        return None
    shown = largest if largest == largest else math.inf   # a NaN against a number: as far apart as can be
    return f"values differ: max |a - b| = {shown:.6g} ({differing} of {a.numel()} elements)"


def _merge_plan(first: dict[str, TensorSpec], second: dict[str, TensorSpec], conflicts: dict[str, Conflict],
                taken: int) -> Plan:
    steps: list[Step] = []
    unused: list[Unused] = []
    sides = (first, second)
    for name in first:
        if name not in second:
            steps.append(copy_step(name, first[name], reason="from a"))
            continue
        conflict = conflicts.get(name)
        kept, left = sides[taken][name], sides[1 - taken][name]
        side = SIDES[taken]
        reason = f"{CONFLICT}: {conflict.what}; took {side}" if conflict else f"{IN_BOTH}: took {side}"
        steps.append(copy_step(name, kept, input_index=taken, reason=reason))
        detail = f"input {1 - taken} ({SIDES[1 - taken]}); input {taken} ({side}) kept"
        unused.append(Unused(name, left.shape, left.dtype, CONFLICT if conflict else IN_BOTH, detail))
    steps += [copy_step(name, spec, input_index=1, reason="from b") for name, spec in second.items()
              if name not in first]
    return Plan(tuple(steps), tuple(unused))


def _conflict_note(conflict: Conflict, side: str) -> str:
    return f"conflict at {conflict.key}: {conflict.what}; took {side} (--prefer {side})"


def average_checkpoints(inputs: Sequence[Path], out: str | None, *, weights: Sequence[float] | None = None,
                        dry_run: bool = False, force: bool = False, container: str | None = None,
                        trust: bool = False, **output: Unpack[OutputOptions]) -> Report:
    """The (weighted) mean of N checkpoints with the same keys, shapes and dtypes: EMA, SWA, model soups.

    Every floating tensor is an ``average`` compute step over all inputs: accumulated in fp32 (fp64 for fp64
    tensors) one source tensor at a time, written in its own dtype (fp16 stays fp16). Integer tensors
    (``num_batches_tracked``, step counters) are copied from the first input. ``weights`` (one per input,
    non-negative, positive sum) are normalised to sum to 1; the default is equal weights. Inputs whose
    keys, shapes or dtypes differ are refused (:class:`~ckptsurgeon.errors.MappingError` naming the first
    few differing keys, both shapes/dtypes and the inputs). The plan reads no tensor data, so a dry run
    reads none. Returns the Report: each averaged target lists every input in ``sources``.
    """
    if len(inputs) < 2:
        raise MappingError(f"average: give at least two input checkpoints (got {len(inputs)})")
    if weights is not None and not all(math.isfinite(w) for w in weights):
        raise MappingError(f"average weights {list(weights)}: every weight must be a finite number")
    arg = ",".join(repr(float(w)) for w in weights) if weights is not None else None
    normalised = average_weights(arg, len(inputs))   # refuses a wrong count or negative weights before reading
    method = "average" if weights is None else "average:" + ",".join(repr(w) for w in normalised)

    def build(checkpoints: Sequence[Checkpoint]) -> Plan:
        paths = [os.fspath(path) for path in inputs]
        check_same_specs([c.specs for c in checkpoints], paths)
        specs = checkpoints[0].specs
        steps = [_average_step(spec, method, len(checkpoints)) if spec.dtype in FLOATING
                 else copy_step(spec.name, spec, reason="not floating: from input 0") for spec in specs.values()]
        notes = _average_notes(specs, weights, normalised)
        return Plan(tuple(steps), (), notes=tuple(notes))
    return run_surgery("average", inputs, build, out, dry_run=dry_run, force=force,
                       container=container, trust=trust, **output)


def parse_weights(text: str) -> list[float]:
    """``"0.2,0.8"`` -> ``[0.2, 0.8]`` (the CLI's ``--weights``)."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise MappingError(f"--weights {text!r}: expected numbers separated by commas, e.g. 0.2,0.8") from None


def _average_step(spec: TensorSpec, method: str, count: int) -> Step:
    return Step(spec.name, COMPUTE, spec.shape, spec.dtype, spec.name, spec.shape, spec.dtype, None, method,
                f"averaged over {count} inputs", operands=tuple((index, spec.name) for index in range(count)),
                reason_kind=ReasonKind.OPERATION)


def check_same_specs(specs: Sequence[dict[str, TensorSpec]], paths: Sequence[str]) -> None:
    """Refuse inputs whose keys, shapes or dtypes differ from the first's, naming the first few differences
    of each differing input (key, both shapes or dtypes, which inputs)."""
    lines: list[str] = []
    for index, other in enumerate(specs[1:], start=1):
        differences = _differences(specs[0], other, f"input {index} ({paths[index]})")
        lines += differences[:SHOWN_DIFFERENCES]
        if len(differences) > SHOWN_DIFFERENCES:
            lines.append(f"and {len(differences) - SHOWN_DIFFERENCES} more in input {index}")
    if lines:
        raise MappingError(f"average: the inputs differ ({'; '.join(lines)}); average only checkpoints of one "
                           f"architecture (same keys, shapes and dtypes): cast or rename them first; nothing written")


def _differences(first: dict[str, TensorSpec], other: dict[str, TensorSpec], where: str) -> list[str]:
    out = [f"{name}: in input 0, missing from {where}" for name in first if name not in other]
    out += [f"{name}: in {where}, missing from input 0" for name in other if name not in first]
    for name, spec in first.items():
        theirs = other.get(name)
        if theirs is not None and spec.shape != theirs.shape:
            out.append(f"{name}: shape {format_shape(spec.shape)} in input 0, {format_shape(theirs.shape)} in {where}")
        elif theirs is not None and spec.dtype != theirs.dtype:
            out.append(f"{name}: dtype {spec.dtype} in input 0, {theirs.dtype} in {where}")
    return out


def _average_notes(specs: dict[str, TensorSpec], weights: Sequence[float] | None,
                   normalised: Sequence[float]) -> list[str]:
    notes: list[str] = []
    if weights is not None and abs(sum(weights) - 1.0) > 1e-9:
        notes.append(f"weights {', '.join(f'{w:g}' for w in weights)} sum to {sum(weights):g}: normalised to "
                     f"{', '.join(f'{w:.6g}' for w in normalised)}")
    copied = [spec.name for spec in specs.values() if spec.dtype not in FLOATING]
    if copied:
        notes.append(f"{_plural(len(copied), 'integer tensor')} (e.g. {copied[0]}) copied from input 0, "
                     f"not averaged")
    statistics = sorted({name.rpartition(".")[0] for name in specs if name.rpartition(".")[2] in BN_STATISTICS})
    if statistics:
        example = statistics[0] or "<root>"
        notes.append(f"BatchNorm running statistics ({_plural(len(statistics), 'module')}, e.g. {example}) "
                     f"were averaged like the weights, but the averaged weights need their own: re-estimate them "
                     f"before evaluating (a pass over training data in train mode, e.g. "
                     f"torch.optim.swa_utils.update_bn)")
    return notes


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"
