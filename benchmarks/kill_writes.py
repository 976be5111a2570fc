"""kill -9 at random points of `ckptsurgeon convert` and `transfer` (not run in CI).

Each trial starts the command on a ~100 MB torch checkpoint, sends SIGKILL after a random delay (from interpreter
a quarter of the usual run to after its finish), then checks: the inputs are unchanged (size, mtime and, at the end,
SHA-256), OUT is absent or complete (equal to OUT of an uninterrupted run), and nothing else is left in the output
folder (no hidden temporaries). Prints the counts and exits 1 if any trial broke a rule.

    python benchmarks/kill_writes.py [--trials 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "kill"
REPO = Path(__file__).resolve().parent.parent


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def build_inputs() -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    WORK.mkdir(parents=True, exist_ok=True)
    source, template = WORK / "source.pt", WORK / "template.safetensors"
    if not source.exists() or not template.exists():
        torch.manual_seed(0)
        state = {f"block{i}.weight": torch.randn(1024, 3072) for i in range(8)}
        state.update({f"block{i}.bias": torch.randn(1024) for i in range(8)})
        torch.save(state, source)
        save_file({name: torch.zeros_like(value) for name, value in state.items()}, str(template))
    return source, template


def commands(source: Path, template: Path, out_dir: Path) -> dict[str, tuple[list[str], Path]]:
    cli = [sys.executable, "-m", "ckptsurgeon"]
    return {
        "convert .safetensors": (cli + ["convert", str(source), str(out_dir / "out.safetensors")],
                                 out_dir / "out.safetensors"),
        "convert .pt": (cli + ["convert", str(source), str(out_dir / "out.pt"), "--dtype", "fp16"],
                        out_dir / "out.pt"),
        "transfer": (cli + ["transfer", str(source), "--target", str(template), "-o",
                            str(out_dir / "out.safetensors")], out_dir / "out.safetensors"),
    }


def reference_outputs(jobs: dict, out_dir: Path) -> dict[str, tuple[str, float]]:
    """OUT of an uninterrupted run of each command, and how long the run took."""
    done = {}
    for name, (cmd, out) in jobs.items():
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
        started = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        done[name] = (sha256(out), time.perf_counter() - started)
    shutil.rmtree(out_dir, ignore_errors=True)
    return done


def trial(cmd: list[str], out: Path, delay: float, reference: str) -> tuple[str, list[str]]:
    out.parent.mkdir(exist_ok=True)
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        child.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        killed = True
    left = sorted(os.listdir(out.parent))
    problems = [f"left behind: {name}" for name in left if name != out.name]
    if out.name in left:
        state = "OUT complete" if sha256(out) == reference else "OUT INCOMPLETE"
        if state != "OUT complete":
            problems.append(state)
    else:
        state = "OUT absent"
    shutil.rmtree(out.parent)
    return f"{'killed' if killed else 'finished'}, {state}", problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    source, template = build_inputs()
    inputs = {path: (path.stat().st_size, path.stat().st_mtime_ns, sha256(path)) for path in (source, template)}
    out_dir = WORK / "out"
    jobs = commands(source, template, out_dir)
    references = reference_outputs(jobs, out_dir)
    counts: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    names = list(jobs)
    for number in range(args.trials):
        name = names[number % len(names)]
        cmd, out = jobs[name]
        reference, seconds = references[name]
        delay = rng.uniform(0.25, 1.1) * seconds   # start-up takes the first quarter or so
        outcome, broken = trial(cmd, out, delay, reference)
        counts[f"{name}: {outcome}"] += 1
        for path, (size, mtime, _) in inputs.items():
            if (path.stat().st_size, path.stat().st_mtime_ns) != (size, mtime):
                broken.append(f"input changed: {path.name}")
        problems += [f"trial {number} ({name}, kill after {delay:.2f} s): {p}" for p in broken]
    for path, (_, _, digest) in inputs.items():
        if sha256(path) != digest:
            problems.append(f"input hash changed: {path.name}")
    print(f"{args.trials} trials; uninterrupted runs: " +
          ", ".join(f"{name} {seconds:.1f} s" for name, (_, seconds) in references.items()))
    for outcome, count in sorted(counts.items()):
        print(f"{count:5}  {outcome}")
    print(f"inputs unchanged (SHA-256): {not any('input' in p for p in problems)}; problems: {len(problems)}")
    for line in problems[:20]:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
