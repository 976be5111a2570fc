"""Bounds on what reading one file may cost, whatever the file says.

A checkpoint is hostile input: a few bytes of pickle can ask for gigabytes (``bytearray(10**10)``), a
fan-out of shared objects can reach billions of paths, a cycle or deep nesting can exhaust the stack. Every
reader charges its work to a :class:`Budget`; going over a limit raises :class:`~ckptsurgeon.errors.LimitError`
naming the limit and the environment variable that raises it. The defaults read every benchmark checkpoint
(100k tensors) and whole pickled YOLOv7 models with room to spare.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import cast

from ..errors import LimitError

ENV_PREFIX = "CKPTSURGEON_MAX_"


@dataclass(frozen=True)
class Limits:
    """Reading limits; each can be raised with ``CKPTSURGEON_MAX_<FIELD>`` (e.g. ``CKPTSURGEON_MAX_OBJECTS``)."""

    depth: int = 200                    # nesting of modules / containers walked
    objects: int = 10_000_000           # objects and elements a pickle may build through constructors
    visits: int = 1_000_000             # entries visited finding the state dict (shared objects once)
    alloc: int = 1 << 30                # bytes constructors may allocate before any storage is read
    header: int = 100_000_000           # bytes of a safetensors header (the safetensors library's own limit)

    @classmethod
    def from_env(cls) -> "Limits":
        values = {}
        for field in fields(cls):
            name = ENV_PREFIX + field.name.upper()
            text = os.environ.get(name)
            if text is None:
                continue
            try:
                values[field.name] = int(text.replace("_", ""))
            except ValueError:
                example = cast(int, field.default) * 4   # every limit is an int with a default
                raise LimitError(f"{name}={text!r}: expected a whole number, e.g. {name}={example}") from None
        return cls(**values)


_WHAT = {"depth": "nests deeper than {limit:,} levels", "objects": "builds more than {limit:,} objects",
         "visits": "needs more than {limit:,} visits to find its tensors (shared or fanned-out objects)",
         "alloc": "allocates more than {limit:,} bytes in constructors", "header": "has a header over {limit:,} bytes"}


def limit_error(path: str, name: str, limit: int) -> LimitError:
    env = ENV_PREFIX + name.upper()
    return LimitError(f"{path}: the file {_WHAT[name].format(limit=limit)} (limit {env}); if you trust the file, "
                      f"raise it, e.g. {env}={limit * 4}")


class Budget:
    """What reading one file has spent so far, against its :class:`Limits`."""

    __slots__ = ("path", "limits", "objects", "visits", "alloc", "max_objects")

    def __init__(self, path: str, limits: Limits | None = None) -> None:
        self.path = path
        self.limits = limits or Limits.from_env()
        self.objects = self.visits = self.alloc = 0
        self.max_objects = self.limits.objects   # read directly by the hot constructor wrapper

    def build(self, count: int) -> None:
        self.objects += count
        if self.objects > self.limits.objects:
            raise limit_error(self.path, "objects", self.limits.objects)

    def visit(self, count: int = 1) -> None:
        self.visits += count
        if self.visits > self.limits.visits:
            raise limit_error(self.path, "visits", self.limits.visits)

    def allocate(self, nbytes: int) -> None:
        self.alloc += nbytes
        if self.alloc > self.limits.alloc:
            raise limit_error(self.path, "alloc", self.limits.alloc)

    def descend(self, depth: int) -> None:
        if depth > self.limits.depth:
            raise limit_error(self.path, "depth", self.limits.depth)
