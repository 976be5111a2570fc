"""Fuzz the three readers (safetensors, torch zip and legacy, plain pickle) with mutations of small valid files.

The same mutations and checks as tests/test_hostile_fuzz.py (tests/hostile_corpus.py), run for longer with a
plain random generator: bit flips, truncation, insertion, safetensors header field edits. Prints the count of
each outcome; any outcome other than "accepted" or "refused: <SurgeonError subclass>" is a bug (an exception of
another kind, a tensor outside the file, a message not naming the file, a safetensors file we accept and the
safetensors library refuses, or a case over --timeout seconds), listed with how to reproduce it.

    python benchmarks/fuzz_readers.py --cases 30000 [--seed 0] [--timeout 5]
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import hostile_corpus as corpus  # noqa: E402

KINDS = ["flip", "flip", "flip", "cut", "insert", "field"]


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


def random_edits(rng: random.Random) -> list[tuple[str, int, int]]:
    return [(rng.choice(KINDS), rng.randrange(1 << 20), rng.randrange(256)) for _ in range(rng.randint(1, 4))]


def run_case(path: Path, seed: corpus.Seed, edits: list, timeout: float) -> str:
    path.write_bytes(corpus.mutate(seed.data, edits))
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return corpus.fuzz_outcome(path)
    except Hang:
        return "BUG: hang"
    except AssertionError as exc:
        return f"BUG: check failed ({str(exc)[:120]})"
    except Exception as exc:  # anything but a SurgeonError is a bug in a reader
        return f"BUG: {type(exc).__name__} escaped ({str(exc)[:120]})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="mutated files to read (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a case may take (default 5)")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    seeds = corpus.fuzz_seeds()
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    bugs: list[str] = []
    slowest = 0.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ckptsurgeon-fuzz-") as folder:
        for case in range(args.cases):
            seed = rng.choice(seeds)
            edits = random_edits(rng)
            path = Path(folder) / f"case{seed.suffix}"
            begun = time.perf_counter()
            outcome = run_case(path, seed, edits, args.timeout)
            slowest = max(slowest, time.perf_counter() - begun)
            counts[(seed.name, outcome)] += 1
            if outcome.startswith("BUG") and len(bugs) < 20:
                bugs.append(f"case {case}: seed {seed.name}, edits {edits}: {outcome}")
    total = time.perf_counter() - started
    print(f"{args.cases} cases in {total:.1f} s (slowest {slowest:.2f} s), seed {args.seed}\n")
    by_outcome = collections.Counter()
    for (seed_name, outcome), count in sorted(counts.items()):
        print(f"{seed_name:14} {count:7}  {outcome}")
        by_outcome["bug" if outcome.startswith("BUG") else outcome.split(":")[0]] += count
    print("\ntotal: " + ", ".join(f"{name} {count}" for name, count in sorted(by_outcome.items())))
    for line in bugs:
        print(line)
    return 1 if bugs else 0


if __name__ == "__main__":
    sys.exit(main())
