"""``ckptsurgeon inspect``: table, filters, tree, JSON, live models; and what importing costs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

import ckptsurgeon.cli
from ckptsurgeon.cli import cli


class TwoStage(nn.Module):
    """stem conv+bn, two stages of conv+bn, classifier: names for glob, regex and tree checks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)) for _ in range(2)])
        self.fc = nn.Linear(4, 10)


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    ckptsurgeon.cli._register()  # what main() does: every command, as the installed script has them
    return CliRunner()


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "two_stage.pt"
    torch.save({"model": TwoStage().state_dict(), "epoch": 1}, path)
    return path


def invoke(runner: CliRunner, *args: str) -> click.testing.Result:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result


def test_table(runner: CliRunner, checkpoint_file: Path) -> None:
    lines = invoke(runner, "inspect", str(checkpoint_file)).stdout.splitlines()
    assert lines[:3] == [f"file: {checkpoint_file}", "format: torch-zip",
                         "container: model (state_dict); container 'model' is the only state dict in the file"]
    assert lines[4].split() == ["key", "shape", "dtype", "numel"]
    rows = [line.split(None, 1) for line in lines[6:6 + 20]]
    assert [row[0] for row in rows] == list(TwoStage().state_dict())
    assert lines[6] == "stem.0.weight                   (4, 3, 3, 3)  float32    108"
    assert "stages.1.1.num_batches_tracked  ()            int64        1" in lines
    # a state dict does not say which tensors are buffers, so there is no parameter count to give
    assert lines[-1] == "tensors: 20   elements: 241   size: 976 B (float32 952 B, int64 24 B)"


def test_filter_glob(runner: CliRunner, checkpoint_file: Path) -> None:
    out = invoke(runner, "inspect", str(checkpoint_file), "--filter", "*.0.weight").stdout
    keys = [line.split()[0] for line in out.splitlines() if line.endswith(tuple("0123456789")) and "(" in line]
    assert keys == ["stem.0.weight", "stages.0.0.weight", "stages.1.0.weight"]
    assert out.splitlines()[-1].startswith("tensors: 3 of 20   ")


def test_filter_conv_glob_on_named_modules(runner: CliRunner, tmp_path: Path) -> None:
    sd = {"backbone.conv1.weight": torch.ones(2, 1, 1, 1), "backbone.bn1.weight": torch.ones(2),
          "head.convs.0.bias": torch.ones(2), "fc.weight": torch.ones(1, 2)}
    save_file(sd, tmp_path / "named.safetensors")
    data = json.loads(invoke(runner, "inspect", str(tmp_path / "named.safetensors"), "--filter", "*conv*", "--json").stdout)
    assert [t["name"] for t in data["tensors"]] == ["backbone.conv1.weight", "head.convs.0.bias"]
    assert (data["totals"]["tensors"], data["totals"]["tensors_in_source"], data["filter"]) == (2, 4, "*conv*")


def test_filter_regex(runner: CliRunner, checkpoint_file: Path) -> None:
    data = json.loads(invoke(runner, "inspect", str(checkpoint_file), "--filter", r"stages\.\d\.1\.running", "--regex",
                             "--json").stdout)
    assert [t["name"] for t in data["tensors"]] == ["stages.0.1.running_mean", "stages.0.1.running_var",
                                                     "stages.1.1.running_mean", "stages.1.1.running_var"]


def test_filter_regex_bn_digit(runner: CliRunner, tmp_path: Path) -> None:
    sd = {"bn1.weight": torch.ones(2), "layer1.0.bn2.bias": torch.ones(2), "bnx.weight": torch.ones(2)}
    torch.save(sd, tmp_path / "r.pt")
    data = json.loads(invoke(runner, "inspect", str(tmp_path / "r.pt"), "--filter", r"bn\d", "--regex", "--json").stdout)
    assert [t["name"] for t in data["tensors"]] == ["bn1.weight", "layer1.0.bn2.bias"]
    glob = json.loads(invoke(runner, "inspect", str(tmp_path / "r.pt"), "--filter", r"bn\d", "--json").stdout)
    assert glob["tensors"] == []  # without --regex the pattern is a glob and matches nothing


def test_tree_depths(runner: CliRunner, checkpoint_file: Path) -> None:
    one = invoke(runner, "inspect", str(checkpoint_file), "--tree", "--depth", "1").stdout.splitlines()
    start = one.index("<root>  241 values  20 tensors")
    assert one[start - 1] == ("values: parameter and buffer elements together (the file does not say which "
                              "tensors are buffers)")
    assert one[start + 1:start + 5] == ["  stem  125 values  6 tensors", "  stages  66 values  12 tensors",
                                        "  fc  50 values  2 tensors", ""]
    two = invoke(runner, "inspect", str(checkpoint_file), "--tree", "--depth", "2").stdout.splitlines()
    start = two.index("<root>  241 values  20 tensors")
    assert two[start + 1:start + 9] == ["  stem  125 values  6 tensors", "    0  108 values  1 tensor",
                                        "    1  17 values  5 tensors", "  stages  66 values  12 tensors",
                                        "    0  33 values  6 tensors", "    1  33 values  6 tensors",
                                        "  fc  50 values  2 tensors", ""]
    full = invoke(runner, "inspect", str(checkpoint_file), "--tree").stdout.splitlines()
    assert full.count("      0  16 values  1 tensor") == 2 and full.count("      1  17 values  5 tensors") == 2


class ConvBn(nn.Module):
    """conv1 (192 parameter elements), bn1 (128 parameter elements; running mean, var and counter: 129)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)


CONV_BN_TREE = ["<root>  320 params + 129 buffer values  6 tensors", "  conv1  192 params  1 tensor",
                "  bn1  128 params + 129 buffer values  5 tensors", ""]
MODEL_TOTALS = "tensors: 6   parameters: 320 (320)   elements: 449   size: 1.8 KiB (float32 1.8 KiB, int64 8 B)"


def test_tree_of_a_state_dict_counts_values_not_params(runner: CliRunner, tmp_path: Path) -> None:
    torch.save(ConvBn().state_dict(), tmp_path / "conv_bn.pt")
    lines = invoke(runner, "inspect", str(tmp_path / "conv_bn.pt"), "--tree").stdout.splitlines()
    start = lines.index("<root>  449 values  6 tensors")
    assert lines[start + 1:] == ["  conv1  192 values  1 tensor", "  bn1  257 values  5 tensors", "",
                                 "tensors: 6   elements: 449   size: 1.8 KiB (float32 1.8 KiB, int64 8 B)"]


def test_tree_of_a_pickled_module_tells_parameters_from_buffers(runner: CliRunner, tmp_path: Path) -> None:
    torch.save(nn.Sequential(nn.Conv2d(3, 64, 1, bias=False), nn.BatchNorm2d(64)), tmp_path / "whole.pt")
    lines = invoke(runner, "inspect", str(tmp_path / "whole.pt"), "--tree").stdout.splitlines()
    start = lines.index("<root>  320 params + 129 buffer values  6 tensors")
    assert lines[start + 1:start + 4] == ["  0  192 params  1 tensor", "  1  128 params + 129 buffer values  5 tensors",
                                          ""]
    assert lines[-1] == MODEL_TOTALS


def test_json_schema(runner: CliRunner, checkpoint_file: Path) -> None:
    data = json.loads(invoke(runner, "inspect", str(checkpoint_file), "--json").stdout)
    assert data["schema"] == "ckptsurgeon.inspect/1"
    assert (data["source"], data["format"], data["container"]) == (str(checkpoint_file), "torch-zip", "model")
    assert data["containers"] == [{"path": "model", "kind": "state_dict", "tensors": 20, "chosen": True}]
    assert (data["stripped_prefixes"], data["stubbed_globals"], data["warnings"]) == ([], [], [])
    assert data["tensors"][0] == {"name": "stem.0.weight", "shape": [4, 3, 3, 3], "dtype": "float32", "numel": 108,
                                  "kind": None, "requires_grad": None}
    assert data["tensors"][5] == {"name": "stem.1.num_batches_tracked", "shape": [], "dtype": "int64", "numel": 1,
                                  "kind": None, "requires_grad": None}
    assert data["totals"] == {"tensors": 20, "tensors_in_source": 20, "parameters": 241, "elements": 241,
                              "bytes": 976, "bytes_by_dtype": {"float32": 952, "int64": 24}}


def test_json_of_a_pickled_module_knows_parameters(runner: CliRunner, tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    torch.save(nn.DataParallel(model), tmp_path / "dp_model.pt")
    data = json.loads(invoke(runner, "inspect", str(tmp_path / "dp_model.pt"), "--json").stdout)
    assert data["container_kind"] == "module"
    assert data["stripped_prefixes"] == ["module."]
    assert "torch.nn.parallel.data_parallel.DataParallel" in data["stubbed_globals"]
    assert [(t["name"], t["kind"], t["requires_grad"]) for t in data["tensors"]] == [
        ("0.weight", "parameter", True), ("0.bias", "parameter", False), ("1.weight", "parameter", True),
        ("1.bias", "parameter", True), ("1.running_mean", "buffer", None), ("1.running_var", "buffer", None),
        ("1.num_batches_tracked", "buffer", None)]
    assert data["totals"]["parameters"] == 10


MODEL_SOURCE = '''
from torch import nn


def build(n=2):
    model = nn.Sequential(nn.Linear(3, n), nn.ReLU(), nn.Linear(n, 1))
    model[0].bias.requires_grad_(False)
    return model


def degenerate():
    return nn.Sequential(nn.Linear(3, 0))


class ConvBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
'''


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "tests_module.py").write_text(textwrap.dedent(MODEL_SOURCE))
    yield tmp_path
    sys.modules.pop("tests_module", None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_live_model_shows_requires_grad(runner: CliRunner, model_dir: Path) -> None:
    out = invoke(runner, "inspect", "--model", "tests_module:build", "--model-kwargs", '{"n": 3}',
                 "--model-path", str(model_dir)).stdout.splitlines()
    assert out[0] == "model: tests_module:build"
    assert out[2].split() == ["key", "shape", "dtype", "numel", "requires_grad"]
    assert out[4:8] == ["0.weight  (3, 3)  float32      9  grad", "0.bias    (3,)    float32      3  frozen",
                        "2.weight  (1, 3)  float32      3  grad", "2.bias    (1,)    float32      1  grad"]
    data = json.loads(invoke(runner, "inspect", "--model", "tests_module:build", "--model-kwargs", '{"n": 3}',
                             "--model-path", str(model_dir), "--json").stdout)
    assert (data["format"], data["source"], data["container"]) == ("model", "tests_module:build", None)
    assert [t["requires_grad"] for t in data["tensors"]] == [True, False, True, True]


def test_tree_of_a_live_model_tells_parameters_from_buffers(runner: CliRunner, model_dir: Path) -> None:
    lines = invoke(runner, "inspect", "--model", "tests_module:ConvBn", "--model-path", str(model_dir),
                   "--tree").stdout.splitlines()
    assert lines[:2] == ["model: tests_module:ConvBn", ""]
    assert lines[2:6] == CONV_BN_TREE
    assert lines[6] == MODEL_TOTALS


def test_degenerate_tensor_warning(runner: CliRunner, model_dir: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that initialising a zero-element tensor does nothing
        result = runner.invoke(cli, ["inspect", "--model", "tests_module:degenerate", "--model-path", str(model_dir)])
        data = json.loads(runner.invoke(cli, ["inspect", "--model", "tests_module:degenerate", "--model-path",
                                              str(model_dir), "--json"]).stdout)
    assert result.exit_code == 0, result.output
    warning_lines = [line for line in result.stdout.splitlines() if line.startswith("warning: ")]
    assert warning_lines[0].startswith("warning: 0.weight has shape (0, 3): a zero-sized dimension")
    assert warning_lines[1].startswith("warning: 0.bias has shape (0,): a zero-sized dimension")
    assert len(data["warnings"]) == 2 and "0.weight has shape (0, 3)" in data["warnings"][0]


def test_degenerate_warning_from_a_file(runner: CliRunner, tmp_path: Path) -> None:
    save_file({"se.fc1.weight": torch.ones(0, 3), "se.fc1.bias": torch.ones(0), "ok": torch.ones(1)},
              tmp_path / "se.safetensors")
    data = json.loads(invoke(runner, "inspect", str(tmp_path / "se.safetensors"), "--json").stdout)
    assert sorted(w.split(" has ")[0] for w in data["warnings"]) == ["se.fc1.bias", "se.fc1.weight"]


def test_path_and_model_are_exclusive(runner: CliRunner, checkpoint_file: Path) -> None:
    for args in (["inspect"], ["inspect", str(checkpoint_file), "--model", "x:y"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2
        assert "give either PATH or --model MODULE:CALLABLE" in result.stderr


def test_every_command_has_help(runner: CliRunner) -> None:
    assert set(cli.commands) >= {"inspect", "diff", "convert"}
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name, command in cli.commands.items():
        assert command.help and command.help.strip(), name
        assert name in top.stdout
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, name
        assert result.stdout.startswith(f"Usage: cli {name} ") or result.stdout.startswith(f"Usage: {name} ")
        assert command.help.strip().splitlines()[0] in " ".join(result.stdout.split())
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{name} {param.opts}"


SPEED_PROBE = """
import runpy, sys
sys.argv = ["ckptsurgeon", "inspect", sys.argv[1], "--json"]
try:
    runpy.run_module("ckptsurgeon", run_name="__main__")
except SystemExit as exc:
    code = exc.code
print("RESULT", code, "torch" in sys.modules, "numpy" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("kind", ["torch-zip", "safetensors"])
def test_inspect_json_imports_neither_torch_nor_numpy(tmp_path: Path, kind: str) -> None:
    sd = {"w": torch.ones(2, 3), "n": torch.tensor(3)}
    path = tmp_path / ("m.pt" if kind == "torch-zip" else "m.safetensors")
    torch.save({"model": sd}, path) if kind == "torch-zip" else save_file(sd, path)
    done = subprocess.run([sys.executable, "-c", SPEED_PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert done.stderr.strip().splitlines()[-1] == "RESULT 0 False False", done.stderr
    assert json.loads(done.stdout)["format"] == kind


def test_import_ckptsurgeon_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, ckptsurgeon, ckptsurgeon.io, ckptsurgeon.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False False", done.stderr
