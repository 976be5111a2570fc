"""The command line as a careless user meets it: every usage error one line and exit 2, a closed pipe is no
error, user code cannot end the tool silently, diff --values treats NaNs by their bits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
import ckptsurgeon.cli.transfer_cmd  # noqa: F401
from ckptsurgeon.cli import cli
from ckptsurgeon.diff import diff_checkpoints
from ckptsurgeon.errors import OptionError
from tempmodules import temporary_module

REPO = Path(__file__).resolve().parent.parent


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line(result: Result, code: int, line: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stderr == line + "\n"
    assert result.stdout == ""


@pytest.mark.parametrize("args, line", [
    (["inspect", "--bogus"], "error: No such option '--bogus'. (see `cli inspect --help`)"),
    (["convert", "only-one"], "error: Missing argument 'OUT'. (see `cli convert --help`)"),
    (["diff", "a", "b", "--atol", "x"], "error: Invalid value for '--atol': 'x' is not a valid float. "
                                        "(see `cli diff --help`)"),
    (["frobnicate"], "error: No such command 'frobnicate'. (see `cli --help`)"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], line: str) -> None:
    assert_one_line(run(*args), 2, line)


def test_help_is_still_the_full_help() -> None:
    result = run("inspect", "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: cli inspect ")


@pytest.mark.parametrize("body", ["raise SystemExit(5)", "import sys; sys.exit(0)"])
def test_a_model_builder_that_exits_is_one_line_and_exit_2(body: str, tmp_path: Path) -> None:
    source = tmp_path / "source.safetensors"
    save_file({"w": torch.ones(2)}, source)
    with temporary_module(tmp_path, f"def build(**kwargs):\n    {body}\n") as module:
        name = module.__name__
        result = run("transfer", source, "--model", f"{name}:build", "--dry-run")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --model '{name}:build': building it failed (SystemExit: ")


def test_deeply_nested_model_kwargs_are_one_line(tmp_path: Path) -> None:
    source = tmp_path / "source.safetensors"
    save_file({"w": torch.ones(2)}, source)
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with temporary_module(tmp_path, "def build(**kwargs):\n    return None\n") as module:
        result = run("transfer", source, "--model", f"{module.__name__}:build", "--model-kwargs", deep, "--dry-run")
    assert_one_line(result, 2, "error: --model-kwargs nests too deep to be keyword arguments; give a flat JSON "
                               "object, e.g. '{\"num_classes\": 20}'")


def test_inspect_json_into_a_closed_pipe_exits_0_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.safetensors"
    save_file({f"layer{i}.weight": torch.zeros(1) for i in range(3000)}, path)
    done = subprocess.run(["bash", "-c", f'"{sys.executable}" -m ckptsurgeon inspect --json "{path}" | head -c 100 '
                                         f'>/dev/null; echo "${{PIPESTATUS[0]}}"'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout == "0\n"
    assert done.stderr == ""


@pytest.fixture
def nan_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    values = torch.tensor([1.0, float("nan"), -0.0])
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    save_file({"w": values}, a)
    save_file({"w": values.clone()}, b)
    save_file({"w": torch.tensor([1.0, 2.0, 0.0])}, c)
    return a, b, c


def test_bit_identical_nans_are_equal(nan_pair: tuple[Path, Path, Path]) -> None:
    a, b, c = nan_pair
    same = run("diff", a, b, "--values")
    assert same.exit_code == 0, same.output
    assert same.stdout.endswith("no differences (1 tensors compared by value)\n")
    differs = run("diff", a, c, "--values", "--atol", "inf")
    assert differs.exit_code == 1
    assert "  w: max abs diff nan" in differs.stdout
    assert diff_checkpoints(a, b, values=True).value_changed == ()


@pytest.mark.parametrize("atol", ["nan", "-1"])
def test_atol_must_be_a_number_at_least_zero(nan_pair: tuple[Path, Path, Path], atol: str) -> None:
    a, b, _ = nan_pair
    assert_one_line(run("diff", a, b, "--values", "--atol", atol),
                    2, f"error: --atol {float(atol)!r}: expected a number >= 0 (inf allowed), e.g. --atol 1e-6")
    with pytest.raises(OptionError):
        diff_checkpoints(a, b, values=True, atol=float(atol))
