#!/usr/bin/env python
"""Benchmark ``ckptsurgeon inspect FILE --json`` against a full load of the same file.

    python benchmarks/bench_inspect.py [--quick] [--only NAME] [--repeat N]
                                       [--inspect-cmd TEMPLATE] [--build-only]

Builds synthetic checkpoints once (cached in benchmarks/_work/), warms the page cache,
then measures whole processes (wall time, peak RssAnon; see measure.py) and reports
PASS/MISS for the performance targets. Exits 0 even when a target is missed; exits 1
when a measured command fails (e.g. the inspect CLI is missing or crashes).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from checkpoints import FORMATS, SPECS, BuiltCheckpoint, ensure_checkpoint
from measure import MIB, CommandError, Result, format_table, measure, warm_cache

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "_work"

INSPECT_CMD_ENV = "CKPTSURGEON_BENCH_INSPECT_CMD"
QUICK_SKIPS = ("big",)

TARGET_FILE = "big"  # the wall-time and speed-up targets are about this checkpoint
TARGET_WALL_S = 0.2
TARGET_SPEEDUP = 20.0
TARGET_PEAK_ANON_MB = 100.0

BASELINE_CODE = {
    "pth": "import torch; torch.load({path!r}, weights_only=True)",
    "safetensors": "import safetensors.torch as s; s.load_file({path!r})",
}

Outcome = Result | CommandError


@dataclass(frozen=True)
class FileReport:
    name: str
    fmt: str
    path: Path
    tensors: int
    inspect: Outcome
    baseline: Outcome

    @property
    def label(self) -> str:
        return f"{self.name}.{self.fmt}"

    @property
    def speedup(self) -> float | None:
        if isinstance(self.inspect, Result) and isinstance(self.baseline, Result):
            return self.baseline.wall_s / self.inspect.wall_s
        return None


@dataclass(frozen=True)
class TargetCheck:
    status: str  # PASS, MISS, SKIP or FAIL
    text: str


# --------------------------------------------------------------------------- commands


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="skip the ~1.5 GB checkpoint")
    parser.add_argument("--only", choices=sorted(SPECS), metavar="NAME",
                        help=f"measure one checkpoint: {', '.join(SPECS)}")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per command: median wall time, max peak (default 3)")
    parser.add_argument("--inspect-cmd", default=os.environ.get(INSPECT_CMD_ENV),
                        metavar="TEMPLATE",
                        help="replace the inspect command (for testing the harness): a shell-"
                             "quoted command line where {python} is this interpreter and "
                             "{file} the checkpoint (appended when absent); default: "
                             f"${INSPECT_CMD_ENV} or '{{python}} -m ckptsurgeon inspect "
                             "{file} --json'")
    parser.add_argument("--build-only", action="store_true",
                        help="build the cached checkpoints, measure nothing")
    return parser.parse_args(argv)


def inspect_command(path: Path, template: str | None) -> list[str]:
    if template is None:
        return [sys.executable, "-m", "ckptsurgeon", "inspect", str(path), "--json"]
    cmd = [token.replace("{python}", sys.executable).replace("{file}", str(path))
           for token in shlex.split(template)]
    return cmd if "{file}" in template else [*cmd, str(path)]


def baseline_command(path: Path, fmt: str) -> list[str]:
    return [sys.executable, "-c", BASELINE_CODE[fmt].format(path=str(path))]


REFERENCE_COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def child_env() -> dict[str, str]:
    """Environment for measured commands: the repository is importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def selected_names(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [args.only]
    return [name for name in SPECS if not (args.quick and name in QUICK_SKIPS)]


# --------------------------------------------------------------------------- measuring


def try_measure(cmd: list[str], repeat: int, env: dict[str, str]) -> Outcome:
    print(f"  $ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    try:
        return measure(cmd, repeat=repeat, env=env)
    except CommandError as error:
        print(f"    FAILED (exit status {error.returncode})", file=sys.stderr, flush=True)
        return error


def measure_references(repeat: int, env: dict[str, str]) -> dict[str, Outcome]:
    print("measuring reference commands", file=sys.stderr, flush=True)
    return {label: try_measure(cmd, repeat, env) for label, cmd in REFERENCE_COMMANDS.items()}


def measure_checkpoint(built: BuiltCheckpoint, args: argparse.Namespace,
                       env: dict[str, str]) -> list[FileReport]:
    reports = []
    for fmt in FORMATS:
        path = built.files[fmt]
        print(f"measuring {path.name} (page cache warmed)", file=sys.stderr, flush=True)
        warm_cache(path)
        inspect = try_measure(inspect_command(path, args.inspect_cmd), args.repeat, env)
        baseline = try_measure(baseline_command(path, fmt), args.repeat, env)
        reports.append(FileReport(built.name, fmt, path, built.tensors, inspect, baseline))
    return reports


# --------------------------------------------------------------------------- reporting


def _wall(outcome: Outcome) -> str:
    return f"{outcome.wall_s:.3f}" if isinstance(outcome, Result) else "FAILED"


def _peak(outcome: Outcome) -> str:
    return f"{outcome.peak_anon_mb:.1f}" if isinstance(outcome, Result) else "FAILED"


def reference_table(references: dict[str, Outcome]) -> str:
    return format_table([
        {"reference command": label, "wall s": _wall(outcome), "peak anon MiB": _peak(outcome)}
        for label, outcome in references.items()
    ])


def results_table(reports: Sequence[FileReport]) -> str:
    return format_table([
        {
            "file": report.name,
            "format": report.fmt,
            "size MiB": f"{report.path.stat().st_size / MIB:.1f}",
            "tensors": str(report.tensors),
            "inspect s": _wall(report.inspect),
            "inspect MiB": _peak(report.inspect),
            "baseline s": _wall(report.baseline),
            "baseline MiB": _peak(report.baseline),
            "speed-up": "-" if report.speedup is None else f"{report.speedup:.1f}x",
        }
        for report in reports
    ])


def _target_file_checks(reports: Sequence[FileReport]) -> list[TargetCheck]:
    checks = []
    for fmt in FORMATS:
        label = f"{TARGET_FILE}.{fmt}"
        report = next((r for r in reports if r.label == label), None)
        wall_target = f"inspect {label} whole-process wall < {TARGET_WALL_S} s"
        speed_target = f"inspect {label} >= {TARGET_SPEEDUP:.0f}x faster than full load"
        if report is None:
            checks += [TargetCheck("SKIP", f"{t}: not measured (--quick/--only)")
                       for t in (wall_target, speed_target)]
            continue
        if not isinstance(report.inspect, Result):
            checks += [TargetCheck("FAIL", f"{t}: inspect command failed")
                       for t in (wall_target, speed_target)]
            continue
        wall = report.inspect.wall_s
        checks.append(TargetCheck("PASS" if wall < TARGET_WALL_S else "MISS",
                                  f"{wall_target}: {wall:.3f} s"))
        if report.speedup is None:
            checks.append(TargetCheck("FAIL", f"{speed_target}: baseline command failed"))
        else:
            checks.append(TargetCheck(
                "PASS" if report.speedup >= TARGET_SPEEDUP else "MISS",
                f"{speed_target}: {report.speedup:.1f}x "
                f"(inspect {wall:.3f} s, full load {report.baseline.wall_s:.3f} s)"))
    return checks


def _memory_checks(reports: Sequence[FileReport]) -> list[TargetCheck]:
    checks = []
    for report in reports:
        target = f"inspect {report.label} peak private memory < {TARGET_PEAK_ANON_MB:.0f} MiB"
        if isinstance(report.inspect, Result):
            peak = report.inspect.peak_anon_mb
            status = "PASS" if peak < TARGET_PEAK_ANON_MB else "MISS"
            checks.append(TargetCheck(status, f"{target}: {peak:.1f} MiB"))
        else:
            checks.append(TargetCheck("FAIL", f"{target}: inspect command failed"))
    return checks


def target_checks(reports: Sequence[FileReport]) -> list[TargetCheck]:
    return _target_file_checks(reports) + _memory_checks(reports)


def failures(references: dict[str, Outcome], reports: Sequence[FileReport]) -> list[CommandError]:
    outcomes = [*references.values(), *(o for r in reports for o in (r.inspect, r.baseline))]
    return [outcome for outcome in outcomes if isinstance(outcome, CommandError)]


def load_line(load_before: float) -> str:
    """Load averages around the measurements (the 'after' one includes our own runs)."""
    cores = os.cpu_count() or 1
    line = (f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
            f"the measurements, {cores} cores")
    return line + (" -- machine busy, wall times are noisy" if load_before > cores / 2 else "")


def print_report(references: dict[str, Outcome], reports: Sequence[FileReport],
                 repeat: int, load_before: float) -> None:
    print(f"\nwhole-process wall time (median of {repeat}) and peak private memory "
          f"(max RssAnon of the process tree, max of {repeat}); page cache warm")
    print(load_line(load_before) + "\n")
    print(reference_table(references))
    print()
    print(results_table(reports))
    print("\ntargets:")
    for check in target_checks(reports):
        print(f"  {check.status}  {check.text}")


def report_failures(errors: Sequence[CommandError]) -> None:
    print(f"\nERROR: {len(errors)} measured command(s) failed; figures above are incomplete.",
          file=sys.stderr)
    for error in errors:
        print("\n" + error.describe(), file=sys.stderr)
    if any("ckptsurgeon" in error.cmd for error in errors):
        print("\n(the `ckptsurgeon inspect FILE --json` CLI must exist and exit 0; "
              f"use --inspect-cmd or ${INSPECT_CMD_ENV} to test the harness without it)",
              file=sys.stderr)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1:
        sys.exit("--repeat must be >= 1")
    built = [ensure_checkpoint(SPECS[name], WORK_DIR) for name in selected_names(args)]
    if args.build_only:
        return 0
    env = child_env()
    load_before = os.getloadavg()[0]
    references = measure_references(args.repeat, env)
    reports = [report for checkpoint in built
               for report in measure_checkpoint(checkpoint, args, env)]
    print_report(references, reports, args.repeat, load_before)
    errors = failures(references, reports)
    if errors:
        report_failures(errors)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
