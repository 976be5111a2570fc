"""Sharded checkpoints: the ``*.index.json`` weight map, and which files a checkpoint consists of.

Index entries are judged by their text before any file is opened: a shard is a relative path inside the
index's folder (no ``..``, not absolute, not the index itself, not the folder). A shard that is a symlink
(the Hugging Face cache points them into ``../../blobs``) stays readable: only its name is judged.
"""

from __future__ import annotations

import json
import os

from ..errors import CheckpointFormatError
from .limits import Limits, limit_error


def read_weight_map(index_path: str, limits: Limits | None = None) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard), every shard name checked by :func:`shard_path`."""
    limits = limits or Limits.from_env()
    try:
        if os.path.getsize(index_path) > limits.header:
            raise limit_error(index_path, "header", limits.header)
        with open(index_path, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        reason = "nested too deep" if isinstance(exc, RecursionError) else exc
        raise CheckpointFormatError(f"{index_path}: not a sharded checkpoint index ({reason})") from exc
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointFormatError(f"{index_path}: the index has an empty weight_map")
    odd = next((shard for shard in weight_map.values() if not isinstance(shard, str)), None)
    if odd is not None:
        shard_path(index_path, odd)   # refuses it, naming it
    for shard in set(weight_map.values()):
        shard_path(index_path, shard)
    return weight_map


def shard_path(index_path: str, shard: object) -> str:
    """Where a shard named in the index lies; refuses names that are not a file inside the index's folder."""
    def refuse(why: str) -> CheckpointFormatError:
        return CheckpointFormatError(f"{index_path}: weight_map names shard {shard!r}, {why}; the index is damaged "
                                     f"or hostile (shards are file names inside the index's folder)")

    if not isinstance(shard, str):
        raise refuse(f"a {type(shard).__name__}, not a file name")
    parts = shard.replace("\\", "/").split("/")
    if not shard.strip() or "\0" in shard or all(part in ("", ".") for part in parts):
        raise refuse("which is not a file name")
    if os.path.isabs(shard) or shard.startswith(("/", "\\")) or ".." in parts:
        raise refuse("which leaves the index's folder")
    folder = os.path.dirname(os.path.abspath(index_path))
    path = os.path.join(os.path.dirname(index_path), shard)
    if shard.endswith(".index.json") or os.path.normpath(os.path.join(folder, shard)) == os.path.abspath(index_path):
        raise refuse("which is the index itself")
    return path


def checkpoint_files(path: str | os.PathLike[str]) -> list[str]:
    """Every file a checkpoint consists of: the file itself, a folder's index and shards (or its one file), or a
    DCP folder's ``.metadata`` and ``.distcp`` files.

    Reads only the index; used to refuse outputs that would overwrite any of them.
    """
    from .reader import _find_index, _single_file_in

    path = os.fspath(path)
    if not os.path.isdir(path) and not path.endswith(".index.json"):
        return [path]
    from .dcp import dcp_files, is_dcp_folder

    if is_dcp_folder(path):
        return dcp_files(path)
    index_path = _find_index(path)
    if index_path is None:
        return [_single_file_in(path)]
    shards = dict.fromkeys(read_weight_map(index_path).values())
    return [index_path] + [shard_path(index_path, shard) for shard in shards]
