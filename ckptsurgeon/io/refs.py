"""What a reader knows of a tensor before reading it: plain tuples, cheap to make by the hundred thousand."""

from __future__ import annotations

from typing import NamedTuple


class StorageRef(NamedTuple):
    """A storage record inside a checkpoint: which record holds its bytes and what they are."""

    key: str
    dtype: str
    numel: int


class TensorRef(NamedTuple):
    """A tensor described by the file's metadata, its data left where it is."""

    key: str                          # the storage record holding its bytes
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None   # None: C-contiguous (safetensors)
    dtype: str
    requires_grad: bool = False
    is_parameter: bool = False
