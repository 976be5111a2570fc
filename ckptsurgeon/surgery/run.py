"""Running a surgery command: open the inputs, build its plan, check the output path, stream the result."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Callable, Sequence, TypedDict

from ..errors import MappingError
from ..io import Checkpoint, open_checkpoint
from ..io.shards import checkpoint_files
from ..plan import COPY, Plan, ReasonKind, Step, Unused
from ..specs import TensorSpec

if TYPE_CHECKING:
    from ..report import Report

PlanBuilder = Callable[[Sequence[Checkpoint]], Plan]


class OutputOptions(TypedDict, total=False):
    """How a surgery command writes OUT: ``format`` (``safetensors``, ``pt``, ``dcp``, ``safetensors-sharded``;
    default from the extension) and ``max_shard_size`` (bytes or ``"5GB"``, for ``safetensors-sharded``)."""

    format: str | None
    max_shard_size: int | str | None


def run_surgery(command: str, inputs: Sequence[str | os.PathLike[str]], build: PlanBuilder, out: str | None, *,
                dry_run: bool = False, force: bool = False, container: str | None = None,
                trust: bool = False, format: str | None = None, max_shard_size: int | str | None = None) -> Report:
    """Plan ``command`` over ``inputs`` with ``build`` and, unless ``dry_run`` (or no ``out``), write the result
    to ``out``: checked against every input file first (never an input; replaced only with ``force``),
    written atomically, one tensor in memory at a time, as ``format`` (default from the extension; the
    folder formats ``safetensors-sharded``, with ``max_shard_size``, and ``dcp``).

    Returns the Report (schema ``ckptsurgeon.report/2``): its ``target`` is the command, its steps name
    their sources by input index.
    """
    from ..io.writer import check_output
    from ..report import Report

    paths = [os.fspath(path) for path in inputs]
    if not paths:
        raise MappingError(f"{command}: give at least one input checkpoint")
    if out is not None and not dry_run:
        check_output(out, inputs=[f for path in paths for f in checkpoint_files(path)], force=force, format=format)
    checkpoints = [open_checkpoint(path, container=container, trust=trust) for path in paths]
    try:
        plan = build(checkpoints)
        report = Report(plan, ", ".join(paths), command, checkpoints[0].info,
                        inputs={f"input {index}": path for index, path in enumerate(paths)})
        if dry_run or out is None:
            return report
        report = dataclasses.replace(report, output=out, applied=True)
        _write(plan, checkpoints, out, report, OutputOptions(format=format, max_shard_size=max_shard_size), force)
        return report
    finally:
        for checkpoint in checkpoints:
            checkpoint.close()


def _write(plan: Plan, checkpoints: Sequence[Checkpoint], out: str, report: Report, output: OutputOptions,
           force: bool) -> None:
    from ..apply import write_plan
    from ..report import report_metadata

    write_plan(plan, list(checkpoints), None, out, metadata=report_metadata(report), force=force, **output)


def copy_step(target: str, spec: TensorSpec, *, source: str | None = None, input_index: int = 0,
              dtype: str | None = None, strategy: str | None = None, reason: str = "unchanged") -> Step:
    """A plain copy of ``source`` (default: the same name) of input ``input_index``, cast to ``dtype``."""
    key = source or spec.name
    operands = ((input_index, key),) if input_index else ()
    return Step(target, COPY, spec.shape, dtype or spec.dtype, key, spec.shape, spec.dtype, strategy, None, reason,
                operands=operands, reason_kind=ReasonKind.OPERATION)


def dropped(spec: TensorSpec, reason: str, detail: str) -> Unused:
    """A source key the command leaves out, and why."""
    return Unused(spec.name, spec.shape, spec.dtype, reason, detail)
