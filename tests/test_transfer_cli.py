"""``ckptsurgeon transfer``: files in, files out, exact exit codes and messages."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ckptsurgeon.cli.transfer_cmd  # noqa: F401  (registers the command)
import ckptsurgeon.io.reader
import ckptsurgeon.io.tensors
from ckptsurgeon import __version__
from ckptsurgeon.cli import cli
from ckptsurgeon.examples.yolov7 import YoloBody
from ckptsurgeon.io.reader import Checkpoint
from ckptsurgeon.io.records import MappedRecords
from ckptsurgeon import transfer
from tempmodules import temporary_module

KWARGS = {"num_classes": 2, "width": 1, "head_attention": "se", "backbone_insert": "cbam"}
NEW_KEYS = 9  # 6 SE weights in the head, 3 CBAM weights in dark3



@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A YOLOv7 checkpoint (.pt) and a template of the same model with SE and CBAM added (.safetensors)."""
    torch.manual_seed(0)
    source, template = tmp_path / "yolov7.pt", tmp_path / "template.safetensors"
    torch.save(YoloBody(num_classes=2, width=1).state_dict(), source)
    save_file(YoloBody(**KWARGS).state_dict(), str(template))
    return source, template


@pytest.fixture
def model_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A module file in its own folder with ``build(**kwargs)``; sys.path and sys.modules are restored."""
    folder = tmp_path / "models"
    folder.mkdir()
    name = f"tests_module_{abs(hash(str(tmp_path)))}"
    (folder / f"{name}.py").write_text(
        "import torch\n"
        "from ckptsurgeon.examples.yolov7 import YoloBody\n\n"
        "def build(**kwargs):\n"
        "    torch.manual_seed(1)\n"
        "    return YoloBody(**kwargs)\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name, folder
    sys.modules.pop(name, None)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["transfer", *map(str, args)])


def model_transfer(source: Path, template: Path) -> dict[str, torch.Tensor]:
    """What the library gives for the same pair, with the template's values as the model's initial ones."""
    model = YoloBody(**KWARGS)
    model.load_state_dict(load_file(str(template)))
    transfer(source, model)
    return model.state_dict()


# --- success -------------------------------------------------------------------------------------


def test_transfer_into_a_template_writes_out_and_both_reports(pair, tmp_path):
    source, template = pair
    out, report_json, report_md = tmp_path / "out.safetensors", tmp_path / "r.json", tmp_path / "r.md"
    result = run(source, "--target", template, "-o", out, "--report", report_json, "--markdown", report_md,
                 "--seed", "7")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "loaded 466/475 target tensors" in result.stdout
    assert "backbone.dark3.1.* -> backbone.dark3.2.*" in result.stdout

    written = load_file(str(out))
    template_keys = list(load_file(str(template)))
    assert sorted(written) == sorted(template_keys)
    expected = model_transfer(source, template)
    for name, value in written.items():
        assert torch.equal(value, expected[name]), name

    with safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ckptsurgeon.version"] == __version__
    assert json.loads(metadata["ckptsurgeon.options"])["seed"] == 7

    data = json.loads(report_json.read_text())
    assert data["schema"] == "ckptsurgeon.report/2"
    assert data["applied"] is True and data["output"] == str(out)
    assert data["options"] == {"rename": [], "resize": [], "init": [], "order_fallback": False, "seed": 7,
                               "copy": [], "disable": []}
    assert [entry["target"] for entry in data["targets"]] == template_keys
    by_target = {entry["target"]: entry for entry in data["targets"]}
    moved = by_target["backbone.dark3.2.cv4.conv.weight"]
    assert (moved["action"], moved["strategy"]) == ("copy", "align")
    assert moved["sources"] == [{"input": 0, "key": "backbone.dark3.1.cv4.conv.weight"}]
    new = by_target["feat1_att.fc.0.weight"]
    assert (new["action"], new["sources"], new["reason_kind"]) == ("init", [], "no source")
    assert data["counts"]["new"] == NEW_KEYS and data["unused"] == [] and data["gate_failures"] == []
    markdown = report_md.read_text()
    assert markdown.startswith("# ckptsurgeon transfer report")
    assert "**loaded 466/475 target tensors" in markdown and f"output: `{out}`" in markdown


def test_transfer_into_a_live_model_writes_a_pt(pair, tmp_path, model_module):
    source, _ = pair
    name, folder = model_module
    out = tmp_path / "out.pt"
    result = run(source, "--model", f"{name}:build", "--model-kwargs", json.dumps(KWARGS),
                 "--model-path", folder, "-o", out)
    assert result.exit_code == 0, result.output
    written = torch.load(out, weights_only=True)
    torch.manual_seed(1)
    model = YoloBody(**KWARGS)
    transfer(source, model)
    expected = model.state_dict()
    assert list(written) == list(expected)
    for key, value in written.items():
        assert torch.equal(value, expected[key]), key


# --- dry run -------------------------------------------------------------------------------------


@pytest.fixture
def no_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(MappedRecords, "buffer", refuse)
    monkeypatch.setattr(ckptsurgeon.io.tensors, "materialize", refuse)
    monkeypatch.setattr(ckptsurgeon.io.reader, "materialize", refuse)
    monkeypatch.setattr(Checkpoint, "raw_bytes", refuse)


def test_dry_run_prints_the_plan_and_reads_no_tensor_data(pair, tmp_path, no_tensor_reads):
    source, template = pair
    out, report_json = tmp_path / "out.safetensors", tmp_path / "plan.json"
    result = run(source, "--target", template, "-o", out, "--dry-run", "--report", report_json)
    assert result.exit_code == 0, result.output
    assert "loaded 466/475 target tensors" in result.stdout
    assert "backbone.dark3.1.channel.mlp.{0,2}.weight" in result.stdout
    assert not out.exists()
    data = json.loads(report_json.read_text())
    assert data["applied"] is False and data["output"] is None


def test_dry_run_needs_no_out(pair, no_tensor_reads):
    source, template = pair
    result = run(source, "--target", template, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "9 new" in result.stdout


BN_CLASSIFIER = """
from torch import nn


class BnClassifier(nn.Module):
    def __init__(self, num_classes=5000):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, num_classes)
"""


def test_grown_head_counts_only_what_came_from_the_source(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    with temporary_module(folder, BN_CLASSIFIER) as module:
        source, template = tmp_path / "fc1000.pt", tmp_path / "fc5000.safetensors"
        torch.save(module.BnClassifier(1000).state_dict(), source)
        save_file(module.BnClassifier(5000).state_dict(), str(template))
        torch.save(module.BnClassifier(5000), tmp_path / "whole5000.pt")
        into_model = run(source, "--model", f"{module.__name__}:BnClassifier", "--model-path", folder,
                         "--resize", "fc.*=slice_pad", "-o", tmp_path / "m.safetensors",
                         "--report", tmp_path / "m.json")
    into_template = run(source, "--target", template, "--resize", "fc.*=slice_pad", "-o", tmp_path / "t.safetensors",
                        "--report", tmp_path / "t.json")
    assert into_model.exit_code == 0 and into_template.exit_code == 0, into_model.output + into_template.output
    # the live model knows its parameters: bn 4 + 4 and fc 5000 x 4 + 5000, of which 1000 rows are the source's
    assert into_model.stdout.splitlines()[0] == ("loaded 4/6 target tensors (66.7%), 0 new, 2 resized, 0 source "
                                                 "tensors unused; 20.0% of parameter elements from the source")
    counts = json.loads((tmp_path / "m.json").read_text())["counts"]
    assert (counts["param_numel_target"], counts["param_numel_from_source"]) == (25_008, 5_008)
    assert (counts["numel_target"], counts["numel_from_source"]) == (25_016, 5_016)
    # a safetensors template does not say which tensors are buffers (running mean and var count too)
    assert into_template.stdout.splitlines()[0] == (
        "loaded 4/6 target tensors (66.7%), 0 new, 2 resized, 0 source tensors unused; 20.1% of tensor elements "
        "from the source (parameters and buffers: the target does not say which is which)")
    counts = json.loads((tmp_path / "t.json").read_text())["counts"]
    assert (counts["numel_target"], counts["numel_from_source"]) == (25_016, 5_016)
    assert (counts["param_numel_target"], counts["param_numel_from_source"]) == (None, None)
    # a whole pickled module as the template says which tensors are parameters
    into_module = run(source, "--target", tmp_path / "whole5000.pt", "--resize", "fc.*=slice_pad", "--dry-run")
    assert into_module.exit_code == 0, into_module.output
    assert into_module.stdout.splitlines()[0].endswith("; 20.0% of parameter elements from the source")


def test_without_seed_the_report_records_seed_0_and_the_output_equals_seed_0(pair, tmp_path):
    source, template = pair
    outputs = {}
    for name, seed_args in (("default", ()), ("zero", ("--seed", "0"))):
        out, report_json = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.json"
        result = run(source, "--target", template, "--init", "feat*_att.*=normal:0.5", "-o", out,
                     "--report", report_json, *seed_args)
        assert result.exit_code == 0, result.output
        assert json.loads(report_json.read_text())["options"]["seed"] == 0
        with safe_open(str(out), "pt") as handle:
            assert json.loads(handle.metadata()["ckptsurgeon.options"])["seed"] == 0
        outputs[name] = load_file(str(out))
    assert outputs["default"].keys() == outputs["zero"].keys()
    for key, value in outputs["default"].items():
        assert torch.equal(value, outputs["zero"][key]), key


# --- gates ---------------------------------------------------------------------------------------


@pytest.fixture
def extra_source(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint with SE blocks the plain template lacks: 6 unused source tensors, nothing new."""
    torch.manual_seed(0)
    source, template = tmp_path / "se.pt", tmp_path / "plain.safetensors"
    torch.save(YoloBody(num_classes=2, width=1, head_attention="se").state_dict(), source)
    save_file(YoloBody(num_classes=2, width=1).state_dict(), str(template))
    return source, template


def test_strict_with_unused_keys_exits_3_writes_the_reports_not_out(extra_source, tmp_path):
    source, template = extra_source
    out, report_json, report_md = tmp_path / "out.safetensors", tmp_path / "r.json", tmp_path / "r.md"
    result = run(source, "--target", template, "-o", out, "--strict", "--report", report_json, "--markdown", report_md)
    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: gate failed, {out} not written: --strict: 6 source tensors unused")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    data = json.loads(report_json.read_text())
    assert data["applied"] is False and len(data["gate_failures"]) == 1
    assert report_md.exists()


def test_allow_unused_lets_strict_pass(extra_source, tmp_path):
    source, template = extra_source
    out = tmp_path / "out.safetensors"
    result = run(source, "--target", template, "-o", out, "--strict", "--allow-unused", "feat*_att.*")
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_min_coverage_exits_3(pair, tmp_path):
    source, template = pair
    out = tmp_path / "out.safetensors"
    result = run(source, "--target", template, "-o", out, "--min-coverage", "0.999")
    assert result.exit_code == 3
    assert "--min-coverage 0.999: only 98.1% of target tensors" in result.stderr
    assert not out.exists()


# --- bad input: exit 2, one line, nothing written ------------------------------------------------


def assert_bad_input(result: Result, message: str, *unwritten: Path) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    for path in unwritten:
        assert not path.exists(), path


def test_model_that_cannot_be_imported(pair, tmp_path):
    source, _ = pair
    out, report = tmp_path / "out.pt", tmp_path / "r.json"
    result = run(source, "--model", "no_such_module_here:build", "-o", out, "--report", report)
    assert_bad_input(result, "cannot import no_such_module_here", out, report)


def test_model_that_cannot_be_built(pair, tmp_path, model_module):
    source, _ = pair
    name, folder = model_module
    out, report = tmp_path / "out.pt", tmp_path / "r.json"
    result = run(source, "--model", f"{name}:build", "--model-kwargs", '{"no_such_arg": 1}', "--model-path", folder,
                 "-o", out, "--report", report)
    assert_bad_input(result, "building it failed", out, report)


def test_target_that_is_not_a_checkpoint(pair, tmp_path):
    source, _ = pair
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    out, report = tmp_path / "out.safetensors", tmp_path / "r.json"
    result = run(source, "--target", text, "-o", out, "--report", report)
    assert_bad_input(result, "not a recognised checkpoint", out, report)


@pytest.mark.parametrize("option, value, message", [
    ("--rename", "([=x", "invalid regular expression"),
    ("--resize", "yolo_head_P*=stretch", "unknown resize method 'stretch'"),
    ("--init", "feat*=magic", "unknown initializer 'magic'"),
])
def test_bad_rules(pair, tmp_path, option, value, message):
    source, template = pair
    out, report = tmp_path / "out.safetensors", tmp_path / "r.json"
    result = run(source, "--target", template, "-o", out, "--report", report, option, value)
    assert_bad_input(result, message, out, report)


def test_out_equal_to_source(pair, tmp_path):
    source, template = pair
    before = source.read_bytes()
    result = run(source, "--target", template, "-o", source, "--force")
    assert_bad_input(result, "the output is also an input")
    assert source.read_bytes() == before


def test_out_existing_without_force(pair, tmp_path):
    source, template = pair
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    result = run(source, "--target", template, "-o", out)
    assert_bad_input(result, "already exists; pass --force")
    assert out.read_bytes() == b"keep me"
    assert run(source, "--target", template, "-o", out, "--force").exit_code == 0
    assert sorted(load_file(str(out))) == sorted(load_file(str(template)))


@pytest.mark.parametrize("target_args", [(), ("--target", "TEMPLATE", "--model", "x.y:build")])
def test_neither_or_both_of_target_and_model(pair, tmp_path, target_args):
    source, template = pair
    out = tmp_path / "out.safetensors"
    args = [str(template) if arg == "TEMPLATE" else arg for arg in target_args]
    result = run(source, *args, "-o", out)
    assert_bad_input(result, "give the target as either --target TEMPLATE or --model MODULE:CALLABLE", out)


def test_no_out_without_dry_run(pair):
    source, template = pair
    assert_bad_input(run(source, "--target", template), "give -o OUT, or --dry-run")


def test_suggestion_is_printed_in_json_and_loads_more_when_taken(tmp_path: Path):
    """Identical modules under unrelated names: the report suggests --order-fallback; taking it loads more."""
    def conv_bn(c: int) -> torch.nn.Sequential:
        return torch.nn.Sequential(torch.nn.Conv2d(c, c, 1, bias=False), torch.nn.BatchNorm2d(c))

    source = torch.nn.ModuleDict({"p": conv_bn(8), "q": conv_bn(8), "r": conv_bn(16)})
    target = torch.nn.ModuleDict({"x": conv_bn(8), "y": conv_bn(8), "z": conv_bn(16)})
    src, template = tmp_path / "source.pt", tmp_path / "template.safetensors"
    torch.save(source.state_dict(), src)
    save_file(target.state_dict(), str(template))
    first = run(src, "--target", template, "-o", tmp_path / "a.safetensors", "--report", tmp_path / "a.json")
    assert first.exit_code == 0, first.output
    assert "suggestions (1)" in first.output and "--order-fallback: identical modules" in first.output
    report = json.loads((tmp_path / "a.json").read_text())
    assert [s["option"] for s in report["suggestions"]] == ["--order-fallback"]
    second = run(src, "--target", template, "-o", tmp_path / "b.safetensors", "--report", tmp_path / "b.json",
                 "--order-fallback")
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["counts"]["loaded"] > report["counts"]["loaded"]
    assert again["suggestions"] == []
