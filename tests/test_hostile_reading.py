"""Hostile and malformed files (tests/hostile_corpus.py): each is refused with one line naming what was refused,
or read, the same way by the library and every command; nothing a file does outlives it; reading is bounded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hostile_corpus as corpus
from refusals import assert_refused, run
from ckptsurgeon.errors import CheckpointFormatError, LimitError, SurgeonError
from ckptsurgeon.io import Limits, open_checkpoint
from ckptsurgeon.io.rebuild import rebuild_parameter
from ckptsurgeon.io.unpickler import SafeUnpickler

CASES = corpus.PICKLE_CASES + corpus.SAFETENSORS_CASES
REPO = Path(__file__).resolve().parent.parent




@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for case in CASES:
        corpus.write_case(case, folder)
    for name, fields, _ in corpus.TORCH_ZIP_CASES:
        corpus.geometry_zip(folder / f"{name}.pt", **fields)
    return folder


@pytest.fixture
def fewer_visits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fan-out cases stop at the visits limit: a lower one keeps the suite fast (the default is tested below)."""
    monkeypatch.setenv("CKPTSURGEON_MAX_VISITS", "100000")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_library_outcome(case: corpus.Case, corpus_dir: Path, fewer_visits: None) -> None:
    path = corpus_dir / f"{case.name}{case.suffix}"
    if case.refusal is None:
        with open_checkpoint(path) as checkpoint:
            assert len(checkpoint) >= 1
        return
    with pytest.raises(SurgeonError, match=re.escape(case.refusal)):
        open_checkpoint(path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inspect_outcome(case: corpus.Case, corpus_dir: Path, fewer_visits: None) -> None:
    result = run("inspect", str(corpus_dir / f"{case.name}{case.suffix}"))
    if case.refusal is None:
        assert result.exit_code == 0, result.output
    else:
        assert_refused(result, case.refusal)


@pytest.mark.parametrize("case", corpus.SAFETENSORS_CASES, ids=lambda c: c.name)
def test_safetensors_library_agrees(case: corpus.Case, corpus_dir: Path) -> None:
    from safetensors import safe_open

    path = str(corpus_dir / f"{case.name}{case.suffix}")
    if case.refusal is None:
        with safe_open(path, "np") as handle:
            assert sorted(handle.keys()) == ["a", "b"]
    else:
        with pytest.raises(Exception):
            with safe_open(path, "np") as handle:
                list(handle.keys())


@pytest.mark.parametrize("name, refusal", [(n, r) for n, _, r in corpus.TORCH_ZIP_CASES],
                         ids=[n for n, _, _ in corpus.TORCH_ZIP_CASES])
def test_torch_zip_geometry_inspect_and_convert_agree(name: str, refusal: str | None, corpus_dir: Path,
                                                      tmp_path: Path) -> None:
    path = str(corpus_dir / f"{name}.pt")
    out = tmp_path / "out.safetensors"
    inspected, converted = run("inspect", path), run("convert", path, str(out))
    if refusal is None:
        assert (inspected.exit_code, converted.exit_code) == (0, 0), (inspected.output, converted.output)
        assert open_checkpoint(out)["w"].shape == (2, 2)
    else:
        assert_refused(inspected, refusal)
        assert_refused(converted, refusal)
        assert not out.exists()


def test_a_file_cannot_change_the_reader_for_the_next_one(corpus_dir: Path, tmp_path: Path) -> None:
    defaults = torch._utils._rebuild_parameter.__defaults__
    ours = rebuild_parameter.__defaults__
    benign = corpus_dir / "numpy_array.pkl"
    for hostile in ("build_on_allowed_function", "build_on_allowed_class"):
        assert_refused(run("diff", str(corpus_dir / f"{hostile}.pkl"), str(benign)), "sets state (BUILD)")
    assert torch._utils._rebuild_parameter.__defaults__ == defaults
    assert rebuild_parameter.__defaults__ == ours
    import ckptsurgeon.io.unpickler as unpickler

    assert not hasattr(unpickler.PlainOrderedDict, "keys") or unpickler.PlainOrderedDict.keys is dict.keys
    same = run("diff", str(benign), str(benign), "--values")
    assert same.exit_code == 0, same.output
    assert same.stdout.endswith("no differences (1 tensors compared by value)\n")


def test_every_allowed_global_is_a_fresh_object(tmp_path: Path) -> None:
    reader = SafeUnpickler(open(os.devnull, "rb"))
    for module, name in [("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                         ("builtins", "bytearray"), ("numpy", "dtype")]:
        first, second = reader.find_class(module, name), reader.find_class(module, name)
        assert first is not second
        with pytest.raises(Exception, match="refused|sets state"):
            first.__setstate__((None, {"__defaults__": (1,)}))


def test_numpy_arrays_hold_only_the_files_bytes(corpus_dir: Path) -> None:
    with open_checkpoint(corpus_dir / "numpy_array.pkl") as checkpoint:
        assert torch.equal(checkpoint["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    with pytest.raises(CheckpointFormatError, match="numpy.ndarray without data from the file"):
        open_checkpoint(corpus_dir / "ndarray_called.pkl")


def test_limits_can_be_raised_by_environment(corpus_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LimitError, match=r"nests deeper than 200 levels \(limit CKPTSURGEON_MAX_DEPTH\); if you "
                                         r"trust the file, raise it, e.g. CKPTSURGEON_MAX_DEPTH=800"):
        open_checkpoint(corpus_dir / "nested_modules.pkl")
    monkeypatch.setenv("CKPTSURGEON_MAX_ALLOC", "10")
    with pytest.raises(LimitError, match="allocates more than 10 bytes"):
        open_checkpoint(corpus_dir / "numpy_array.pkl")   # 24 bytes of array data
    monkeypatch.setenv("CKPTSURGEON_MAX_ALLOC", "lots")
    assert_refused(run("inspect", str(corpus_dir / "numpy_array.pkl")), "CKPTSURGEON_MAX_ALLOC='lots': expected a whole number")
    monkeypatch.delenv("CKPTSURGEON_MAX_ALLOC")
    monkeypatch.setenv("CKPTSURGEON_MAX_HEADER", "40")
    assert_refused(run("inspect", str(corpus_dir / "st_valid.safetensors")), "has a header over 40 bytes (limit "
                                                                             "CKPTSURGEON_MAX_HEADER)")
    with open_checkpoint(corpus_dir / "st_valid.safetensors", limits=Limits(header=1000)) as checkpoint:
        assert list(checkpoint) == ["a", "b"]


def test_defaults_read_a_whole_pickled_yolov7_with_room(tmp_path: Path) -> None:
    """The official YOLOv7 layout (the structure, hence the objects and visits, of the real .pt; narrow so the
    test is fast) reads at a hundredth of every limit."""
    from ckptsurgeon.examples import official_yolov7

    model = official_yolov7.Model(num_classes=80, width=8)
    path = tmp_path / "yolov7.pt"
    torch.save({"model": model.half(), "ema": None, "optimizer": None, "epoch": 1}, path)
    tight = Limits(depth=20, objects=Limits.objects // 100, visits=Limits.visits // 100, alloc=0)
    with open_checkpoint(path, limits=tight) as checkpoint:
        assert len(checkpoint) == len(model.state_dict())


# VmHWM: the peak resident memory of this process image (ru_maxrss would carry over pytest's across exec).
_PROBE = """
import sys, time
from ckptsurgeon.errors import SurgeonError
from ckptsurgeon.io import open_checkpoint
start = time.perf_counter()
try:
    open_checkpoint(sys.argv[1]).close()
except SurgeonError:
    pass
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print(time.perf_counter() - start, int(peak) // 1024)
"""


@pytest.mark.parametrize("name", ["bytearray_bomb.pkl", "shared_dict_fanout.pkl", "module_fanout.pkl",
                                  "module_cycle.pkl", "nested_modules.pkl", "stub_call_amplifier.pkl",
                                  "ndarray_newobj.pkl", "memo_bomb.pkl", "st_deep_json.safetensors"])
def test_small_hostile_files_are_bounded(name: str, corpus_dir: Path) -> None:
    """Every file under 1 MB is refused or read in under 5 s and 300 MB (peak resident, interpreter included)."""
    path = corpus_dir / name
    assert path.stat().st_size < 4_000_000
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=REPO, check=True)
    seconds, peak_mb = done.stdout.split()
    assert float(seconds) < 5.0
    assert int(peak_mb) < 300


def test_a_record_declared_twice_is_checked_against_the_larger_declaration(tmp_path: Path) -> None:
    """Found by the fuzzer: a flipped byte makes two storages name the same record with different sizes."""
    path = corpus.torch_zip(tmp_path / "twice.pt", {
        "w": corpus._Tensor(corpus._Storage(4), 0, (2, 2), (2, 1)),
        "v": corpus._Tensor(corpus._Storage(1), 0, (1,), (1,))}, b"\0" * 4)
    assert_refused(run("inspect", str(path)), "storage record data/0 holds 4 bytes, but the pickle declares 4 float32 "
                                               "(16 bytes)")
