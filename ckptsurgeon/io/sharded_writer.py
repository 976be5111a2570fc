"""Sharded safetensors output in the Hugging Face hub's layout (what transformers' ``save_pretrained`` writes).

Shards are ``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json`` (``metadata.total_size``
and ``weight_map``); a checkpoint that fits in one shard is a lone ``model.safetensors`` without an index, as
the hub writes it. Shard boundaries are decided from the specs before any tensor is read, so the folder is
streamed one tensor at a time, and it appears at its path only when every file in it is complete.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Mapping

from ..errors import OutputError
from ..specs import TensorSpec
from .records import FileSpan
from .safetensors_file import check_key, write_safetensors_stream

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")

Raw = Callable[[str], "memoryview | FileSpan | None"]


def parse_size(text: str | int) -> int:
    """Bytes from ``5GB``, ``500MB``, ``2GiB``, ``1.5GB`` or a plain number of bytes (decimal units are powers
    of 1000, as the hub's ``max_shard_size``; ``KiB``/``MiB``/``GiB`` powers of 1024)."""
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.fullmatch(text)
        unit = match.group(2).upper() if match else ""
        if match is None or unit not in _UNITS:
            raise OutputError(f"{text!r} is not a size; write e.g. 5GB, 500MB, 2GiB or a number of bytes")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise OutputError(f"{text!r}: a shard size must be more than 0 bytes")
    return size


def plan_shards(specs: list[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Tensors grouped into shards in order, as the hub splits a state dict: a shard is closed when the next
    tensor would take it over ``max_shard_size``; a tensor larger than that gets a shard of its own."""
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    current_size = 0
    for spec in specs:
        if spec.nbytes > max_shard_size:
            shards.append([spec])
            continue
        if current and current_size + spec.nbytes > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(spec)
        current_size += spec.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    """The hub's file names for ``count`` shards (one shard: ``model.safetensors``)."""
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{index:05d}-of-{count:05d}.safetensors" for index in range(1, count + 1)]


def build_index(shards: list[list[TensorSpec]], names: list[str]) -> dict[str, Any]:
    """The ``model.safetensors.index.json`` contents: total bytes of tensor data and tensor -> shard file."""
    weight_map = {spec.name: name for shard, name in zip(shards, names, strict=True) for spec in shard}
    total = sum(spec.nbytes for shard in shards for spec in shard)
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def write_sharded_safetensors(folder: str | os.PathLike[str], specs: list[TensorSpec],
                              produce: Mapping[str, Callable[[], Any]], *, raw: Raw | None = None,
                              metadata: Mapping[str, str] | None = None,
                              max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, force: bool = False) -> str:
    """Write ``specs`` (values from ``raw(name)`` or ``produce[name]()``, one at a time) as a sharded folder.

    Args:
        folder: the output folder; it appears whole or not at all (replaced only with ``force``).
        max_shard_size: bytes per shard, or a size such as ``"5GB"``.
        metadata: goes into every shard's header, with ``format: pt`` as transformers writes it.
    Returns:
        The folder's path.
    """
    from .folders import atomic_folder
    from .writer import tensor_bytes

    limit = parse_size(max_shard_size)
    for spec in specs:
        check_key(spec.name)
    shards = plan_shards(specs, limit)
    names = shard_names(len(shards))
    header = {"format": "pt", **dict(metadata or {})}

    def chunk(name: str) -> memoryview | FileSpan:
        data = raw(name) if raw is not None else None
        return data if data is not None else tensor_bytes(produce[name]())

    with atomic_folder(os.fspath(folder), force=force) as temporary:
        for shard, name in zip(shards, names, strict=True):
            _write_shard(os.path.join(temporary, name), shard, (chunk(spec.name) for spec in shard), header)
        if len(shards) > 1:
            index = json.dumps(build_index(shards, names), indent=2, sort_keys=True) + "\n"
            with open(os.path.join(temporary, INDEX_NAME), "w", encoding="utf-8") as handle:
                handle.write(index)
                handle.flush()
                os.fsync(handle.fileno())
    return os.fspath(folder)


def _write_shard(path: str, specs: list[TensorSpec], chunks: Any, metadata: dict[str, str]) -> None:
    try:
        with open(path, "wb") as handle:
            write_safetensors_stream(handle, specs, chunks, metadata)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise OutputError(f"{path}: writing failed ({exc}); nothing was written") from exc
