"""A progress bar on stderr for long reads and writes of tensor data.

Shown only when the CLI asks for it (:func:`showing_progress`; off in the library, and off with ``--json`` or
``--quiet``), stderr is a terminal, and the work has taken more than about a second: short runs and pipes
stay silent. The bar counts bytes, with the rate and the time left.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Any, Callable, Iterator

import click

from ..runtime import setting

# Whether long reads/writes show a progress bar (the CLI turns it on; see showing_progress()).
SHOW_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("ckptsurgeon_progress", default=False)
DELAY = 1.0   # seconds of work before a bar appears

Clock = Callable[[], float]
_clock: Clock = time.monotonic   # tests replace it with a fake clock


@contextlib.contextmanager
def showing_progress(enabled: bool = True) -> Iterator[None]:
    """Within this block, long reads and writes of tensor data show a bar on stderr (when it is a terminal)."""
    with setting(SHOW_PROGRESS, enabled):
        yield


class ByteProgress:
    """Bytes done out of ``total``; the click bar starts only once ``DELAY`` seconds have passed."""

    def __init__(self, total: int, label: str, *, stream: Any = None, clock: Clock | None = None) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.stream = stream if stream is not None else _stderr()
        self.clock = clock or _clock
        self.started = self.clock()
        self.enabled = SHOW_PROGRESS.get() and _is_terminal(self.stream) and total > 0
        self.bar: Any = None

    def update(self, nbytes: int) -> None:
        """``nbytes`` more are done."""
        self.done += nbytes
        if not self.enabled:
            return
        if self.bar is None and self.clock() - self.started >= DELAY:
            self.bar = click.progressbar(length=self.total, label=self.label, file=self.stream, show_eta=True,
                                         show_percent=True, item_show_func=self._describe, width=24)
            self.bar.__enter__()
            self.bar.update(self.done)
        elif self.bar is not None:
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def _describe(self, _item: Any) -> str:
        from ..views import human_bytes

        elapsed = max(self.clock() - self.started, 1e-9)
        return f"{human_bytes(self.done)}/{human_bytes(self.total)}, {human_bytes(int(self.done / elapsed))}/s"

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stderr() -> Any:
    return sys.stderr   # looked up when a bar is made: the CLI runner (and tests) replace it


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class TensorProgress:
    """Per-tensor byte counts for a writer: :meth:`begin` with each tensor's name; a tensor counts as done when
    the next one begins (the writer has written it) or at :meth:`close`."""

    def __init__(self, sizes: dict[str, int], label: str) -> None:
        self.sizes = sizes
        self.bar = ByteProgress(sum(sizes.values()), label)
        self.pending: str | None = None

    def begin(self, name: str) -> None:
        self._finish_pending()
        self.pending = name

    def close(self, *, completed: bool = True) -> None:
        """End the bar; the last tensor begun counts as written only when the write ``completed``."""
        if completed:
            self._finish_pending()
        self.bar.close()

    def _finish_pending(self) -> None:
        if self.pending is not None:
            self.bar.update(self.sizes.get(self.pending, 0))
            self.pending = None
