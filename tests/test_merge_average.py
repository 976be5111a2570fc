"""merge and average: real values against hand-computed ones, conflicts per key, refusals that write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ckptsurgeon.cli import _register, cli
from ckptsurgeon.errors import MappingError, OutputError
from ckptsurgeon.io.reader import Checkpoint
from ckptsurgeon.plan import COMPUTE, COPY
from ckptsurgeon.specs import TensorSpec
from ckptsurgeon.surgery.combine import (MergeConflictError, _merge_plan, average_checkpoints, describe_difference,
                                         merge_checkpoints)

_register()
State = dict[str, torch.Tensor]


class ConvBNHead(torch.nn.Module):
    """Conv + BatchNorm + Linear: float weights, BN running statistics and an int64 num_batches_tracked."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, classes)


class TwoLinear(torch.nn.Module):
    """No BatchNorm at all."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 2)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [*map(str, args)])


def read(path: Path) -> State:
    if path.suffix == ".safetensors":
        return load_file(path)
    loaded: State = torch.load(path, weights_only=True)
    return loaded


def write(state: State, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def trained(seed: int, dtype: torch.dtype = torch.float32, classes: int = 3) -> State:
    """A ConvBNHead state with distinct values per seed (running statistics and counters too)."""
    torch.manual_seed(seed)
    state = ConvBNHead(classes).state_dict()
    state["bn.weight"].uniform_(0.5, 1.5)
    state["bn.bias"].normal_()
    state["bn.running_mean"].normal_()
    state["bn.running_var"].uniform_(0.5, 2.0)
    state["bn.num_batches_tracked"].fill_(100 + seed)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture
def three(tmp_path: Path) -> tuple[list[Path], list[State]]:
    """Three checkpoints of one architecture, in both input formats."""
    states = [trained(seed) for seed in range(3)]
    suffixes = [".safetensors", ".pt", ".safetensors"]
    return [write(s, tmp_path / f"ckpt{i}{suffix}") for i, (s, suffix) in enumerate(zip(states, suffixes))], states


def hand_mean(states: list[State], key: str, weights: list[float] | None = None) -> torch.Tensor:
    stacked = torch.stack([s[key].double() for s in states])
    if weights is None:
        return stacked.mean(0)
    w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    return (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).sum(0)


def folder(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# --------------------------------------------------------------------------- average


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_average_equals_the_mean_by_hand(tmp_path: Path, three: tuple[list[Path], list[State]], suffix: str) -> None:
    paths, states = three
    out = tmp_path / f"mean{suffix}"
    result = run("average", *paths, "-o", out)
    assert result.exit_code == 0, result.output
    averaged = read(out)
    assert sorted(averaged) == sorted(states[0])
    for key, value in averaged.items():
        assert value.dtype == states[0][key].dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(value, hand_mean(states, key).float(), rtol=1.3e-6, atol=1e-6)
            assert not torch.equal(value, states[0][key])   # really averaged
    assert "average: 9 tensors written to" in result.output
    assert "8 average, 1 unchanged" in result.output


def test_weighted_average_and_normalised_weights(tmp_path: Path, three: tuple[list[Path], list[State]]) -> None:
    paths, states = three
    out = tmp_path / "soup.safetensors"
    report = average_checkpoints(paths, str(out), weights=[1, 1, 2])
    averaged = read(out)
    for key in ("conv.weight", "bn.running_var", "fc.bias"):
        torch.testing.assert_close(averaged[key], hand_mean(states, key, [1, 1, 2]).float(), rtol=1.3e-6, atol=1e-6)
    assert report.plan.step_for("fc.weight").method == "average:0.25,0.25,0.5"
    assert "weights 1, 1, 2 sum to 4: normalised to 0.25, 0.25, 0.5" in report.plan.notes
    unit = average_checkpoints(paths, None, weights=[0.2, 0.3, 0.5], dry_run=True)
    assert not any("normalised" in note for note in unit.plan.notes)


def test_fp16_inputs_are_averaged_in_fp32_and_written_fp16(tmp_path: Path) -> None:
    states = [trained(seed, torch.float16) for seed in range(4)]
    paths = [write(s, tmp_path / f"half{i}.safetensors") for i, s in enumerate(states)]
    out = tmp_path / "half-mean.pt"
    assert run("average", *paths, "-o", out).exit_code == 0
    averaged = read(out)
    for key, value in averaged.items():
        if key != "bn.num_batches_tracked":
            assert value.dtype == torch.float16
            # an fp16 accumulator would round after every addition; fp32 leaves one rounding at the end
            torch.testing.assert_close(value, hand_mean(states, key).half(), rtol=1e-3, atol=1e-3)


def test_integer_buffers_come_from_the_first_input(tmp_path: Path, three: tuple[list[Path], list[State]]) -> None:
    paths, states = three
    out = tmp_path / "mean.safetensors"
    report = average_checkpoints(paths, str(out))
    assert read(out)["bn.num_batches_tracked"].item() == 100 == states[0]["bn.num_batches_tracked"].item()
    step = report.plan.step_for("bn.num_batches_tracked")
    assert (step.action, step.sources) == (COPY, ((0, "bn.num_batches_tracked"),))
    assert "1 integer tensor (e.g. bn.num_batches_tracked) copied from input 0, not averaged" in report.plan.notes


def test_batchnorm_note_only_with_batchnorm_statistics(tmp_path: Path, three: tuple[list[Path], list[State]]) -> None:
    paths, _ = three
    notes = average_checkpoints(paths, None, dry_run=True).plan.notes
    assert any(note.startswith("BatchNorm running statistics (1 module, e.g. bn) were averaged") and
               "re-estimate them" in note for note in notes)
    plain = [write(TwoLinear().state_dict(), tmp_path / f"lin{i}.safetensors") for i in range(2)]
    assert average_checkpoints(plain, None, dry_run=True).plan.notes == ()


def test_average_refuses_inputs_that_differ_naming_keys_shapes_dtypes(tmp_path: Path) -> None:
    base = trained(0)
    other_head = trained(1, classes=5)                      # fc.weight (5, 8), fc.bias (5,)
    half = trained(2, torch.float16)
    renamed = {("head." + k if k.startswith("fc.") else k): v for k, v in trained(3).items()}
    paths = [write(s, tmp_path / f"{name}.safetensors") for name, s in
             (("base", base), ("head5", other_head), ("half", half), ("renamed", renamed))]
    before = folder(tmp_path)
    with pytest.raises(MappingError) as caught:
        average_checkpoints(paths, str(tmp_path / "out.safetensors"))
    message = str(caught.value)
    assert "fc.weight: shape (3, 8) in input 0, (5, 8) in input 1" in message
    assert "fc.bias: shape (3,) in input 0, (5,) in input 1" in message
    assert "bn.bias: dtype float32 in input 0, float16 in input 2" in message
    assert "and 5 more in input 2" in message and "nothing written" in message
    with pytest.raises(MappingError, match=r"fc.weight: in input 0, missing from input 1 \(.*renamed"):
        average_checkpoints([paths[0], paths[3]], str(tmp_path / "out.safetensors"))
    result = run("average", paths[0], paths[3], "-o", tmp_path / "out.pt")
    assert result.exit_code == 2
    assert "head.fc.bias: in input 1" in result.stderr and "missing from input 0" in result.stderr
    assert folder(tmp_path) == before


def test_average_refusals_before_reading(tmp_path: Path, three: tuple[list[Path], list[State]]) -> None:
    paths, _ = three
    with pytest.raises(MappingError, match="at least two"):
        average_checkpoints(paths[:1], str(tmp_path / "o.safetensors"))
    with pytest.raises(MappingError, match="need 3 non-negative numbers"):
        average_checkpoints(paths, str(tmp_path / "o.safetensors"), weights=[1, 2])
    with pytest.raises(MappingError, match="finite"):
        average_checkpoints(paths, str(tmp_path / "o.safetensors"), weights=[1, float("nan"), 1])
    bad = run("average", *paths, "-o", tmp_path / "o.safetensors", "--weights", "1,x,2")
    assert bad.exit_code == 2 and "--weights '1,x,2': expected numbers" in bad.stderr
    no_out = run("average", *paths)
    assert no_out.exit_code == 2 and "-o OUT" in no_out.stderr


def test_output_equal_to_an_input_is_refused(three: tuple[list[Path], list[State]]) -> None:
    paths, _ = three
    before = [p.read_bytes() for p in paths]
    with pytest.raises(OutputError, match="the output is also an input"):
        average_checkpoints(paths, str(paths[1]), force=True)
    with pytest.raises(OutputError, match="the output is also an input"):
        merge_checkpoints(paths[0], paths[2], str(paths[2]), force=True)
    assert [p.read_bytes() for p in paths] == before


def test_nothing_left_on_a_bad_input(tmp_path: Path, three: tuple[list[Path], list[State]]) -> None:
    paths, _ = three
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(paths[0].read_bytes()[:200])
    before = folder(tmp_path)
    for args in (("average", paths[0], broken, "-o", tmp_path / "out.safetensors"),
                 ("average", paths[0], tmp_path / "missing.pt", "-o", tmp_path / "out.pt"),
                 ("merge", paths[0], broken, tmp_path / "out.safetensors")):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ")
        assert folder(tmp_path) == before


def test_dry_run_reads_no_tensor_data_and_writes_nothing(tmp_path: Path, three: tuple[list[Path], list[State]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    paths, _ = three

    def no_data(self: Checkpoint, name: str) -> Any:
        raise AssertionError(f"read {name} in a dry run")
    monkeypatch.setattr(Checkpoint, "__getitem__", no_data)
    monkeypatch.setattr(Checkpoint, "raw_bytes", no_data)
    monkeypatch.setattr(Checkpoint, "raw_span", no_data)
    before = folder(tmp_path)
    report = average_checkpoints(paths, str(tmp_path / "out.safetensors"), dry_run=True)
    assert not report.applied and report.output is None
    result = run("average", *paths, "-o", tmp_path / "out.safetensors", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "average: 9 tensors planned (dry run: nothing read or written); 8 average, 1 unchanged" in result.output
    merged = run("merge", paths[0], paths[1], tmp_path / "m.safetensors", "--dry-run", "--prefer", "b")
    assert merged.exit_code == 0, merged.output
    assert "9 keys in both inputs with the same shape and dtype: value conflicts are found only when run" \
        in merged.output
    assert folder(tmp_path) == before


def test_json_lists_every_input_as_sources_of_averaged_keys(tmp_path: Path,
                                                           three: tuple[list[Path], list[State]]) -> None:
    paths, _ = three
    out, report_path = tmp_path / "mean.safetensors", tmp_path / "report.json"
    result = run("average", *paths, "-o", out, "--json", "--report", report_path)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.output)
    assert data == {**json.loads(report_path.read_text()), "created": data["created"]}
    assert data["schema"] == "ckptsurgeon.report/2" and data["applied"] is True and data["output"] == str(out)
    assert data["inputs"] == {f"input {i}": str(p) for i, p in enumerate(paths)}
    by_target = {entry["target"]: entry for entry in data["targets"]}
    conv = by_target["conv.weight"]
    assert conv["action"] == str(COMPUTE) and conv["method"] == "average"
    assert conv["sources"] == [{"input": i, "key": "conv.weight"} for i in range(3)]
    assert by_target["bn.num_batches_tracked"]["sources"] == [{"input": 0, "key": "bn.num_batches_tracked"}]
    assert any("re-estimate" in warning for warning in data["warnings"])


# --------------------------------------------------------------------------- merge


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, State, State]:
    """a: conv + bn + fc (3 classes). b: the same conv values, another bn (values), fc of 5 classes, fp16
    running_var, and a new key."""
    a = trained(0)
    b = {k: v.clone() for k, v in trained(1, classes=5).items()}
    b["conv.weight"], b["conv.bias"] = a["conv.weight"].clone(), a["conv.bias"].clone()
    b["bn.running_var"] = b["bn.running_var"].half()
    b["bn.num_batches_tracked"] = a["bn.num_batches_tracked"].clone()
    b["extra.scale"] = torch.full((4,), 7.0)
    return write(a, tmp_path / "a.pt"), write(b, tmp_path / "b.safetensors"), a, b


def test_merge_conflicts_are_reported_per_key_and_refused(tmp_path: Path, pair: tuple[Path, Path, State, State]) -> None:
    a_path, b_path, a, b = pair
    out = tmp_path / "merged.safetensors"
    before = folder(tmp_path)
    with pytest.raises(MergeConflictError) as caught:
        merge_checkpoints(a_path, b_path, str(out))
    conflicts = {c.key: c for c in caught.value.conflicts}
    assert list(conflicts) == ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "fc.weight", "fc.bias"]
    assert conflicts["fc.weight"].what == "shape (3, 8) in a, (5, 8) in b"
    assert conflicts["bn.running_var"].what == "dtype float32 in a, float16 in b"
    delta = (a["bn.running_mean"].double() - b["bn.running_mean"].double()).abs().max().item()
    assert conflicts["bn.running_mean"].kind == "value"
    assert conflicts["bn.running_mean"].what == f"values differ: max |a - b| = {delta:.6g} (8 of 8 elements)"
    result = run("merge", a_path, b_path, out)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: merge: 6 keys conflict between a (")
    assert "\n  fc.bias: shape (3,) in a, (5,) in b\n" in result.stderr
    assert "--prefer a or --prefer b" in result.stderr
    assert folder(tmp_path) == before


@pytest.mark.parametrize("side", ["a", "b"])
def test_merge_with_prefer_takes_that_side_and_still_reports(tmp_path: Path, pair: tuple[Path, Path, State, State],
                                                             side: str) -> None:
    a_path, b_path, a, b = pair
    out = tmp_path / "merged.pt"
    result = run("merge", a_path, b_path, out, "--prefer", side)
    assert result.exit_code == 0, result.stderr
    merged = read(out)
    assert list(merged) == [*a, "extra.scale"]          # a's keys in order, then b's new one
    chosen = a if side == "a" else b
    for key, value in merged.items():
        expected = chosen.get(key, b.get(key))
        assert expected is not None and torch.equal(value, expected) and value.dtype == expected.dtype, key
    assert f"note: conflict at fc.weight: shape (3, 8) in a, (5, 8) in b; took {side} (--prefer {side})" \
        in result.output
    assert f"note: conflict at bn.bias: values differ: max |a - b| = " in result.output
    report = merge_checkpoints(a_path, b_path, None, prefer=side)
    assert report.plan.step_for("extra.scale").sources == ((1, "extra.scale"),)
    assert report.plan.step_for("fc.bias").reason.startswith("conflict: shape (3,) in a, (5,) in b; took")
    taken = 0 if side == "a" else 1
    assert report.plan.step_for("conv.weight").sources == ((taken, "conv.weight"),)
    assert {u.source: u.reason for u in report.plan.unused}["conv.weight"] == "in both inputs"


def test_merge_of_disjoint_and_equal_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = {f"backbone.{k}": v for k, v in TwoLinear().state_dict().items()}
    head = {"head.weight": torch.randn(2, 4), "head.bias": torch.zeros(2), "shared": torch.tensor([float("nan"), -0.0])}
    backbone["shared"] = torch.tensor([float("nan"), 0.0])    # NaN equals NaN, -0.0 equals 0.0: no conflict
    out = tmp_path / "detector.safetensors"
    report = merge_checkpoints(write(backbone, tmp_path / "bb.pt"), write(head, tmp_path / "h.safetensors"), str(out))
    merged = load_file(out)
    head_order = list(load_file(tmp_path / "h.safetensors"))
    assert list(merged) == [*backbone, *[k for k in head_order if k != "shared"]]
    assert all(torch.equal(merged[k], v) for k, v in {**head, **backbone}.items() if k != "shared")
    assert report.plan.notes == ()


def test_describe_difference() -> None:
    assert describe_difference(torch.tensor([1.0, float("nan"), 0.0]), torch.tensor([1.0, float("nan"), -0.0])) is None
    assert describe_difference(torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3])) == \
        "values differ: max |a - b| = 3 (1 of 3 elements)"
    assert describe_difference(torch.tensor([float("nan")]), torch.tensor([1.0])) == \
        "values differ: max |a - b| = inf (1 of 1 elements)"
    assert describe_difference(torch.tensor([True, False]), torch.tensor([True, True])) == \
        "values differ: max |a - b| = 1 (1 of 2 elements)"


NAMES = st.lists(st.sampled_from([f"m{i}.{p}" for i in range(6) for p in ("weight", "bias")]), unique=True, max_size=8)


@settings(max_examples=60, deadline=None)
@given(NAMES, NAMES, st.sampled_from([0, 1]))
def test_merge_plan_accounts_for_every_key(first_names: list[str], second_names: list[str], taken: int) -> None:
    first = {n: TensorSpec(n, (2,), "float32") for n in first_names}
    second = {n: TensorSpec(n, (2,), "float32") for n in second_names}
    plan = _merge_plan(first, second, {}, taken)
    assert [s.target for s in plan.steps] == [*first_names, *[n for n in second_names if n not in first]]
    read_keys = [source for step in plan.steps for source in step.sources]
    left_out = [((1 - taken), u.source) for u in plan.unused]
    every = {(0, n) for n in first_names} | {(1, n) for n in second_names}
    assert sorted(read_keys + left_out) == sorted(every)
