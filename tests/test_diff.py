"""``diff``: keys on one side only, shape and dtype changes, values on request; exit 1 on differences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
from ckptsurgeon.cli import cli
from ckptsurgeon.diff import diff_checkpoints


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a = {"conv.weight": torch.zeros(2, 2), "fc.weight": torch.ones(3), "old.bias": torch.zeros(1), "steps": torch.arange(3)}
    b = {"conv.weight": torch.zeros(2, 2), "fc.weight": torch.ones(4), "new.bias": torch.zeros(1),
         "steps": torch.arange(3, dtype=torch.int32)}
    torch.save(a, tmp_path / "a.pt")
    torch.save({"model": b}, tmp_path / "b.pt")
    return tmp_path / "a.pt", tmp_path / "b.pt"


def test_diff_keys_shapes_dtypes(pair: tuple[Path, Path]) -> None:
    result = diff_checkpoints(*pair)
    assert result.only_a == ("old.bias",)
    assert result.only_b == ("new.bias",)
    assert [(c.name, c.before, c.after) for c in result.shape_changed] == [("fc.weight", "(3,)", "(4,)")]
    assert [(c.name, c.before, c.after) for c in result.dtype_changed] == [("steps", "int64", "int32")]
    assert result.value_changed == () and result.values_compared == 0
    assert result.has_differences


def test_diff_cli_exit_1_and_sections(pair: tuple[Path, Path]) -> None:
    a, b = pair
    result = CliRunner().invoke(cli, ["diff", str(a), str(b)])
    assert result.exit_code == 1
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"A: {a}", f"B: {b}",
        "", "only in A (1)", "  old.bias",
        "", "only in B (1)", "  new.bias",
        "", "shape differs (1)", "  fc.weight: (3,) -> (4,)",
        "", "dtype differs (1)", "  steps: int64 -> int32",
    ]


def test_diff_values(tmp_path: Path) -> None:
    base = {"w": torch.zeros(2, 2), "b": torch.ones(2), "n": torch.tensor(4), "e": torch.empty(0, 3)}
    changed = dict(base, w=torch.tensor([[0.0, 0.25], [-1.5, 0.0]]))
    torch.save(base, tmp_path / "a.pt")
    save_file(changed, tmp_path / "b.safetensors")  # formats may differ
    result = diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.safetensors", values=True)
    assert result.value_changed == (("w", 1.5),)
    assert result.values_compared == 4
    cli_result = CliRunner().invoke(cli, ["diff", str(tmp_path / "a.pt"), str(tmp_path / "b.safetensors"), "--values"])
    assert cli_result.exit_code == 1
    assert cli_result.stdout.splitlines()[-2:] == ["values differ (1 of 4 compared)", "  w: max abs diff 1.5"]
    within = CliRunner().invoke(cli, ["diff", str(tmp_path / "a.pt"), str(tmp_path / "b.safetensors"), "--values",
                                      "--atol", "1.5"])
    assert within.exit_code == 0
    assert within.stdout.splitlines()[-1] == "no differences (4 tensors compared by value)"


def test_diff_equal_files_exit_0(tmp_path: Path) -> None:
    sd = {"w": torch.randn(3, 3), "n": torch.tensor(2)}
    torch.save(sd, tmp_path / "a.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "b.pt")  # same after unwrapping
    for extra in ([], ["--values"]):
        result = CliRunner().invoke(cli, ["diff", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), *extra])
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[-1].startswith("no differences")
    assert not diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt", values=True).has_differences


def test_diff_values_ignores_dtype_for_equal_numbers(tmp_path: Path) -> None:
    torch.save({"w": torch.tensor([1.0, 2.5])}, tmp_path / "a.pt")
    torch.save({"w": torch.tensor([1.0, 2.5], dtype=torch.float16)}, tmp_path / "b.pt")
    result = diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt", values=True)
    assert [c.name for c in result.dtype_changed] == ["w"]
    assert result.value_changed == ()


def test_diff_nan_counts_as_changed(tmp_path: Path) -> None:
    torch.save({"w": torch.tensor([1.0, 2.0])}, tmp_path / "a.pt")
    torch.save({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "b.pt")
    (name, delta), = diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt", values=True).value_changed
    assert name == "w" and delta != delta


def test_diff_container_option(tmp_path: Path) -> None:
    sd = {"w": torch.zeros(2)}
    torch.save({"model": sd, "ema": {"w": torch.ones(2)}}, tmp_path / "a.pt")
    torch.save({"model": {"w": torch.ones(2)}, "ema": {"w": torch.ones(2)}}, tmp_path / "b.pt")
    assert diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt", values=True).value_changed == (("w", 1.0),)
    assert diff_checkpoints(tmp_path / "a.pt", tmp_path / "b.pt", values=True, container="ema").value_changed == ()


def test_diff_missing_file_is_exit_2(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1)}, tmp_path / "a.pt")
    result = CliRunner().invoke(cli, ["diff", str(tmp_path / "a.pt"), str(tmp_path / "nope.pt")])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'nope.pt'}: no such file\n"
