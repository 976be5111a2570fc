"""Process-level helpers."""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator


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
