"""Measure whole processes: wall time and peak private memory.

Peak private memory is the maximum, over samples taken every ~1 ms while the command
runs, of the RssAnon of the process plus all its descendants (``/proc/<pid>/status``).
RssAnon counts anonymous pages (heap, malloc'd tensors, stacks); pages of memory-mapped
files are RssFile and do not count. Linux only; no third-party dependency.

    from measure import measure, warm_cache, format_table
    warm_cache("ckpt.pth")
    result = measure([sys.executable, "-c", "import torch"], repeat=3)
    print(result.wall_s, result.peak_anon_mb)

Sizes are in MiB (2**20 bytes) throughout; the ``_mb`` names keep the usual spelling.
"""

from __future__ import annotations

import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SAMPLE_INTERVAL_S = 0.001
TREE_REFRESH_EVERY = 10  # re-list descendants every N samples (~10 ms)
TAIL_BYTES = 4096
READ_CHUNK = 16 * 1024 * 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class Result:
    wall_s: float  # median over runs
    peak_anon_mb: float  # max over runs of the sampled RssAnon of the process tree, MiB
    returncode: int
    stdout_tail: str
    wall_runs_s: tuple[float, ...] = ()
    peak_rss_mb: float = 0.0  # kernel high-water RSS (ru_maxrss, file pages included): cross-check
    cpu_s: float = 0.0  # median user+sys CPU time of the process tree: steadier than wall on a busy machine
    samples: int = 0  # fewest RssAnon samples taken in one run


class CommandError(RuntimeError):
    """A measured command exited with a non-zero status."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr_tail: str, stdout_tail: str):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.stdout_tail = stdout_tail
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = [f"measured command failed with exit status {self.returncode}:",
                 f"  $ {shlex.join(self.cmd)}"]
        for label, tail in (("stderr", self.stderr_tail), ("stdout", self.stdout_tail)):
            if tail.strip():
                lines.append(f"  --- {label} (tail) ---")
                lines.extend("  " + line for line in tail.strip().splitlines()[-15:])
        return "\n".join(lines)


# --------------------------------------------------------------------------- /proc


def read_rss_anon_kib(pid: int) -> int:
    """RssAnon of one process in KiB; 0 when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            data = status.read()
    except OSError:
        return 0
    start = data.find(b"RssAnon:")
    if start < 0:
        return 0
    return int(data[start + len(b"RssAnon:"):data.index(b"kB", start)])


def _children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as children:
                kids.extend(int(kid) for kid in children.read().split())
        except OSError:
            pass
    return kids


def process_tree(root: int) -> list[int]:
    """The root pid followed by all its live descendants."""
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(_children(pid))
    return tree


class _AnonSampler(threading.Thread):
    """Samples the summed RssAnon of a process tree until stopped."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak_kib = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        pids = [self.root]
        while not self._stop_event.is_set():
            if self.samples % TREE_REFRESH_EVERY == 0:
                pids = process_tree(self.root)
            self.peak_kib = max(self.peak_kib, sum(map(read_rss_anon_kib, pids)))
            self.samples += 1
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class _TailReader(threading.Thread):
    """Drains a pipe, keeping only its last bytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.tail = b""

    def run(self) -> None:
        while chunk := self.stream.read1(65536):
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]
        self.stream.close()

    def text(self) -> str:
        self.join()
        return self.tail.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class _Run:
    wall_s: float
    peak_anon_kib: int
    max_rss_kib: int
    cpu_s: float
    samples: int
    returncode: int
    stdout_tail: str
    stderr_tail: str


def _run_once(cmd: Sequence[str], env: Mapping[str, str] | None) -> _Run:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    sampler = _AnonSampler(proc.pid)
    sampler.start()
    stdout, stderr = _TailReader(proc.stdout), _TailReader(proc.stderr)
    stdout.start()
    stderr.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - start
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    cpu_s = rusage.ru_utime + rusage.ru_stime
    return _Run(wall_s, sampler.peak_kib, rusage.ru_maxrss, cpu_s, sampler.samples,
                proc.returncode, stdout.text(), stderr.text())


def measure(cmd: list[str], *, repeat: int = 3, env: Mapping[str, str] | None = None,
            setup: Callable[[], object] | None = None) -> Result:
    """Run ``cmd`` ``repeat`` times; median wall time, max peak RssAnon.

    ``setup``, when given, is called before each run, outside the measurement (e.g. to delete
    the previous run's output or to warm the page cache).
    Raises CommandError as soon as one run exits with a non-zero status.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    runs: list[_Run] = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        run = _run_once(cmd, env)
        if run.returncode != 0:
            raise CommandError(cmd, run.returncode, run.stderr_tail, run.stdout_tail)
        runs.append(run)
    return Result(
        wall_s=statistics.median(run.wall_s for run in runs),
        peak_anon_mb=max(run.peak_anon_kib for run in runs) / 1024,
        returncode=runs[-1].returncode,
        stdout_tail=runs[-1].stdout_tail,
        wall_runs_s=tuple(run.wall_s for run in runs),
        peak_rss_mb=max(run.max_rss_kib for run in runs) / 1024,
        cpu_s=statistics.median(run.cpu_s for run in runs),
        samples=min(run.samples for run in runs),
    )


def warm_cache(path: str | os.PathLike[str]) -> int:
    """Read a file, or every file under a folder, once; return the bytes read."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    buffer = bytearray(READ_CHUNK)
    total = 0
    for file in files:
        with open(file, "rb", buffering=0) as stream:
            while count := stream.readinto(buffer):
                total += count
    return total


# --------------------------------------------------------------------------- tables

_NUMERIC = re.compile(r"[-+]?\d[\d,]*(\.\d+)?( ?[x%])?")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Aligned text table; the first row's keys are the header.

    Columns holding numbers (or strings that look like numbers, optionally ending in
    'x' or '%') are right-aligned, the others left-aligned. Floats get three decimals:
    format them yourself for other precisions.
    """
    if not rows:
        return ""
    header = list(rows[0])
    cells = [[_cell(row.get(key, "")) for key in header] for row in rows]
    widths = [max(len(key), *(len(line[i]) for line in cells)) for i, key in enumerate(header)]
    right = [any(_NUMERIC.fullmatch(line[i]) for line in cells) for i in range(len(header))]

    def render(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right)).rstrip()

    lines = [render(header), render(["-" * w for w in widths])]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def finish(checks: Sequence[Mapping[str, object]], errors: Sequence[str], started: float) -> int:
    """Print the targets' summary table and tally; the exit status: 1 when something failed to run."""
    print("\nsummary of targets")
    print(format_table(checks))
    counts = {s: sum(c["status"] == s for c in checks) for s in ("PASS", "MISS", "FAIL")}
    print(f"\n{counts['PASS']} PASS, {counts['MISS']} MISS, {counts['FAIL']} FAIL; "
          f"benchmark took {time.perf_counter() - started:.0f} s")
    if errors:
        print(f"\nERROR: {len(errors)} failure(s):", file=sys.stderr)
        for error in errors:
            print("\n" + error, file=sys.stderr)
        return 1
    return 0

