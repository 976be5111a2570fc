"""Mutations of small valid files through the three readers (bounded for CI; benchmarks/fuzz_readers.py runs
the same fuzzer for longer): only SurgeonErrors escape, each naming the file, on one line; every tensor of an
accepted file lies inside it; every accepted safetensors file is accepted by the safetensors library too."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_corpus as corpus

SEEDS = corpus.fuzz_seeds()
EDIT = st.tuples(st.sampled_from(["flip", "flip", "flip", "cut", "insert", "field"]),
                 st.integers(0, 1 << 20), st.integers(0, 255))
FOLDER = Path(tempfile.mkdtemp(prefix="ckptsurgeon-fuzz-"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(seed=st.sampled_from(SEEDS), edits=st.lists(EDIT, min_size=1, max_size=4))
def test_mutated_files_are_read_or_refused_cleanly(seed: corpus.Seed, edits: list) -> None:
    path = FOLDER / f"mutated{seed.suffix}"
    path.write_bytes(corpus.mutate(seed.data, edits))
    started = time.perf_counter()
    outcome = corpus.fuzz_outcome(path)
    assert time.perf_counter() - started < 5.0
    assert outcome == "accepted" or outcome.startswith("refused: ")


def test_every_seed_is_accepted() -> None:
    for seed in SEEDS:
        path = FOLDER / f"seed{seed.suffix}"
        path.write_bytes(seed.data)
        assert corpus.fuzz_outcome(path) == "accepted", seed.name
