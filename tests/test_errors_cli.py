"""Bad input gives exit 2 and one line naming the file (or --model) and the problem; bugs give exit 70."""

from __future__ import annotations

import os
import random
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
from ckptsurgeon.cli import INTERNAL_ERROR, cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def real_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("errors") / "real.pt"
    torch.manual_seed(0)
    torch.save({"model": torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)).state_dict()}, path)
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    assert assert_one_line_error(run("inspect", str(path)), str(path)) == f"error: {path}: no such file"


def test_folder_without_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    line = assert_one_line_error(run("inspect", str(tmp_path)), str(tmp_path), "no checkpoint files")
    assert line == f"error: {tmp_path}: a folder with no *.index.json and no checkpoint files; name the file to read"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert assert_one_line_error(run("inspect", str(path))) == f"error: {path}: the file is empty"


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.1])
def test_truncated_zip(tmp_path: Path, real_pt: Path, fraction: float) -> None:
    data = real_pt.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert_one_line_error(run("inspect", str(path)), str(path), "truncated")


def test_truncated_legacy(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(1000)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "legacy.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) - 100])
    assert_one_line_error(run("inspect", str(path)), str(path), "truncated")


def test_truncated_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.ones(100), "b": torch.ones(100)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:-40])
    assert_one_line_error(run("inspect", str(path)), str(path), "'b' needs 400 bytes at 528, but the file ends at 888; the file is truncated")
    path.write_bytes(data[:20])
    assert_one_line_error(run("inspect", str(path)), str(path), "past the end of the file")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    assert_one_line_error(run("inspect", str(path)), str(path))


@pytest.mark.parametrize("head", [b"\x80\x02", b"PK\x03\x04", b"\x80\x02\x8a\x0a", b"(", b"\x00" * 8 + b"{"])
def test_garbage_behind_a_plausible_start(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(head + bytes(random.Random(1).randrange(256) for _ in range(500)))
    assert_one_line_error(run("inspect", str(path)), str(path))


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 8}')
    assert_one_line_error(run("inspect", str(path)), str(path), "a JSON file, not a checkpoint")


def test_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "epoch.pt"
    torch.save({"epoch": 1}, path)
    assert assert_one_line_error(run("inspect", str(path))) == f"error: {path}: no tensors found in this file"


def test_unknown_container(tmp_path: Path, real_pt: Path) -> None:
    line = assert_one_line_error(run("inspect", str(real_pt), "--container", "ema"), str(real_pt))
    assert line == f"error: {real_pt}: no container 'ema'; this file holds: model (see `ckptsurgeon inspect --containers`)"


def test_container_on_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.ones(1)}, tmp_path / "m.safetensors")
    assert_one_line_error(run("inspect", str(tmp_path / "m.safetensors"), "--container", "ema"), "drop --container ema")


def test_broken_index(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "missing.safetensors"}}')
    assert_one_line_error(run("inspect", str(tmp_path)), str(tmp_path / "missing.safetensors"), "no such file")
    (tmp_path / "model.safetensors.index.json").write_text("not json")
    assert_one_line_error(run("inspect", str(tmp_path)), "model.safetensors.index.json", "not a sharded checkpoint index")


MODULE_SOURCE = '''
from torch import nn

import not_a_real_dependency_zz  # noqa
'''

GOOD_SOURCE = '''
from torch import nn


def build(n=2):
    return nn.Linear(n, 1)


def explode():
    raise RuntimeError("constructor failed")


def not_a_model():
    return 42
'''


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "ckst_bad_module.py").write_text(textwrap.dedent(MODULE_SOURCE))
    (tmp_path / "ckst_good_module.py").write_text(textwrap.dedent(GOOD_SOURCE))
    yield tmp_path
    for name in ("ckst_bad_module", "ckst_good_module"):
        sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("args, fragments", [
    (["--model", "ckst_bad_module:build"], ["--model 'ckst_bad_module:build'", "cannot import ckst_bad_module",
                                              "not_a_real_dependency_zz"]),
    (["--model", "ckst_no_such_module_zz:build"], ["cannot import ckst_no_such_module_zz", "--model-path"]),
    (["--model", "ckst_good_module:nope"], ["--model 'ckst_good_module:nope'", "has no attribute 'nope'"]),
    (["--model", "ckst_good_module"], ["expected module.path:callable"]),
    (["--model", "ckst_good_module:build", "--model-kwargs", "{n: 3"], ["--model-kwargs is not valid JSON"]),
    (["--model", "ckst_good_module:build", "--model-kwargs", "[3]"], ["--model-kwargs must be a JSON object"]),
    (["--model", "ckst_good_module:build", "--model-kwargs", '{"m": 3}'], ["building it failed", "TypeError"]),
    (["--model", "ckst_good_module:explode"], ["--model 'ckst_good_module:explode'", "building it failed",
                                               "RuntimeError: constructor failed"]),
    (["--model", "ckst_good_module:not_a_model"], ["returned int, not an nn.Module"]),
])
def test_unusable_model(model_dir: Path, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run("inspect", *args, "--model-path", str(model_dir)), *fragments)


def test_convert_errors(tmp_path: Path, real_pt: Path) -> None:
    assert_one_line_error(run("convert", str(tmp_path / "nope.pt"), str(tmp_path / "out.safetensors")), "no such file")
    assert_one_line_error(run("convert", str(real_pt), str(tmp_path / "missing_dir" / "o.pt")), "does not exist")
    assert_one_line_error(run("convert", str(real_pt), str(tmp_path)), "is a folder")
    assert sorted(os.listdir(tmp_path)) == []


def test_internal_error_is_one_line_exit_70(real_pt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ckptsurgeon.inspect

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(ckptsurgeon.inspect, "inspect_checkpoint", broken)
    result = run("inspect", str(real_pt))
    assert result.exit_code == INTERNAL_ERROR == 70
    assert "Traceback" not in result.output
    (line,) = result.stderr.splitlines()
    assert "RuntimeError: something nobody expected" in line
    assert "--debug" in line
    debug = run("--debug", "inspect", str(real_pt))
    assert isinstance(debug.exception, RuntimeError)
    assert str(debug.exception) == "something nobody expected"


def test_debug_shows_domain_errors_too(tmp_path: Path) -> None:
    from ckptsurgeon.errors import CheckpointFormatError

    result = run("--debug", "inspect", str(tmp_path / "missing.pt"))
    assert isinstance(result.exception, CheckpointFormatError)


def corrupted_copies(data: bytes, seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        if rng.random() < 0.3:
            out.append(data[: rng.randrange(1, len(data))])
            continue
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        out.append(bytes(damaged))
    return out


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_damaged_files_fail_as_bad_input(tmp_path: Path, kind: str) -> None:
    """Cut or flipped bytes either still read (a byte inside a tensor) or fail as bad input: never a crash."""
    from safetensors.torch import save_file

    from ckptsurgeon.errors import SurgeonError
    from ckptsurgeon.io import open_checkpoint

    sd = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(3, dtype=torch.int64)}
    source = tmp_path / "source"
    if kind == "safetensors":
        save_file(sd, source)
    else:
        torch.save(sd, source, _use_new_zipfile_serialization=kind == "zip")
    path = tmp_path / "damaged"
    for data in corrupted_copies(source.read_bytes(), seed=len(kind), count=60):
        path.write_bytes(data)
        try:
            with open_checkpoint(path) as checkpoint:
                for name in checkpoint:
                    checkpoint[name]
        except SurgeonError:
            pass
