"""Process-level helpers."""

from __future__ import annotations

import contextlib
import contextvars
import gc
from typing import Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects (specs, plan steps).

    With torch imported a full collection walks some 170k objects; planning 100k keys would otherwise
    trigger several, a quarter of its time, for garbage that reference counting frees anyway.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def setting(variable: contextvars.ContextVar[T], value: T) -> Iterator[None]:
    """``variable`` holds ``value`` within this block (a CLI option such as --check or the progress bar)."""
    token = variable.set(value)
    try:
        yield
    finally:
        variable.reset(token)
