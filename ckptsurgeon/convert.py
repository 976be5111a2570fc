"""Rewriting a checkpoint in another format or dtype, one tensor at a time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .io import CheckpointInfo, open_checkpoint
from .io.shards import checkpoint_files
from .io.writer import check_output, write_streamed
from .specs import FLOATING, TensorSpec, normalize_dtype


@dataclass(frozen=True)
class ConvertResult:
    source: CheckpointInfo
    output: str
    tensors: int
    cast: int           # tensors whose dtype changed
    nbytes: int


def convert_checkpoint(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
                       dtype: str | None = None, container: str | None = None, trust: bool = False, force: bool = False,
                       check: bool | None = None, format: str | None = None,
                       max_shard_size: int | str | None = None) -> ConvertResult:
    """Write ``source``'s state dict to ``output`` (format by extension, or ``format``: ``safetensors``, ``pt``,
    ``dcp``, ``safetensors-sharded`` with ``max_shard_size``), casting floating tensors to ``dtype``.

    Integer and bool tensors (e.g. ``num_batches_tracked``) keep their dtype. The output is written
    atomically and never replaces the input. ``check`` verifies the CRC-32 of each torch zip record read.
    """
    target_dtype = normalize_dtype(dtype) if dtype else None
    output = check_output(output, inputs=checkpoint_files(source), force=force, format=format)
    with open_checkpoint(source, container=container, trust=trust, check=check) as checkpoint:
        check_output(output, inputs=_input_files(checkpoint.info), force=force, format=format)  # shards too
        specs = [_converted(spec, target_dtype) for spec in checkpoint.specs.values()]
        produce = {spec.name: _producer(checkpoint, spec) for spec in specs}
        unchanged = {spec.name for spec in specs if spec.dtype == checkpoint.specs[spec.name].dtype}
        metadata = {"ckptsurgeon.source": os.path.basename(os.fspath(source)),
                    "ckptsurgeon.container": str(checkpoint.info.container or "")}
        write_streamed(output, specs, produce, metadata=metadata,
                       raw=lambda name: checkpoint.raw_span(name) if name in unchanged else None, format=format,
                       max_shard_size=max_shard_size, force=force)
        cast = len(specs) - len(unchanged)
        return ConvertResult(checkpoint.info, output, len(specs), cast, sum(s.nbytes for s in specs))


def _input_files(info: CheckpointInfo) -> list[str]:
    folder = os.path.dirname(info.path)
    return [info.path] + [os.path.join(folder, shard) for shard in info.shards]


def _converted(spec: TensorSpec, dtype: str | None) -> TensorSpec:
    if dtype is None or spec.dtype not in FLOATING:
        return spec
    return TensorSpec(spec.name, spec.shape, dtype)


def _producer(checkpoint: Any, spec: TensorSpec) -> Any:
    def produce() -> Any:
        import torch

        return checkpoint[spec.name].to(getattr(torch, spec.dtype))
    return produce
