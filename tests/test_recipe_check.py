"""``ckptsurgeon recipe check``: a valid recipe, what each pattern selects, warnings for patterns that select
nothing, errors for invalid recipes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from torch import nn

import ckptsurgeon as cs
from ckptsurgeon.cli import _register, cli
from ckptsurgeon.recipe import load_recipe
from ckptsurgeon.recipe_check import check_recipe, key_names, model_names

_register()
YOLO_SE = ["--model", "ckptsurgeon.examples.yolov7:build_yolov7", "--model-kwargs", '{"head_attention": "se"}']
RECIPE = """schema = 1
[rename]
rules = [["^old\\\\.", "new."]]
[resize]
"head.weight" = "slice_pad"
[init]
"nothing_like_this.*" = "zeros"
[gates]
allow_unused = ["aux.*"]
[freeze]
patterns = ["body"]
types = ["BatchNorm1d", "Conv3d"]
[[optimizer.groups]]
name = "head"
patterns = ["re:^head\\\\."]
"""


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)


def test_patterns_select_parameters_under_modules_and_target_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    source = key_names(["old.weight", "aux.bias", "body.0.weight"], "src.pt")
    result = check_recipe(load_recipe(path), model_names(Net(), "net"), source)
    selected = {(use.table, use.pattern): use.selected for use in result.uses}
    assert selected[("rename", r"^old\.")] == ("old.weight",)
    assert selected[("resize", "head.weight")] == ("head.weight",)
    assert selected[("init", "nothing_like_this.*")] == ()
    assert selected[("gates.allow_unused", "aux.*")] == ("aux.bias",)
    # parameters only: BatchNorm statistics are not trained, so never selected for freezing
    assert selected[("freeze.patterns", "body")] == ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias")
    assert selected[("freeze.types", "BatchNorm1d")] == ("body.1",)
    assert selected[("freeze.types", "Conv3d")] == ()
    assert selected[("optimizer.groups (head)", r"re:^head\.")] == ("head.weight", "head.bias")
    assert result.warnings() == ["[init] 'nothing_like_this.*' selects no target keys of net",
                                 "[freeze.types] 'Conv3d' selects no modules of net"]


def test_cli_shows_selections_and_warns_for_patterns_that_select_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    runner = CliRunner()
    result = runner.invoke(cli, ["recipe", "check", str(path), *YOLO_SE])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid recipe (schema 1, sha256 " in result.output
    assert "warning: [freeze.patterns] 'body' selects no parameters of --model" in result.output
    assert "'feat*_att.*'" not in result.output   # this recipe has no such pattern
    lines = result.output.splitlines()
    assert any(line.split() == ["resize", "'head.weight':", "0", "target", "keys"] for line in lines)
    assert any(line.split()[:3] == ["rename", "'^old\\.':", "source"] and line.endswith("not checked")
               for line in lines)


def test_cli_against_a_template_checkpoint_as_json(tmp_path: Path) -> None:
    template = tmp_path / "t.safetensors"
    cs.write_state_dict(template, Net().state_dict())
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    result = CliRunner().invoke(cli, ["recipe", "check", str(path), "--target", str(template), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[:result.output.rindex("}") + 1])
    uses = {(u["table"], u["pattern"]): u for u in data["patterns"]}
    # a checkpoint does not say which keys are parameters: everything but BatchNorm statistics counts
    assert uses[("freeze.patterns", "body")]["selected"] == ["body.0.weight", "body.0.bias", "body.1.weight",
                                                              "body.1.bias"]
    assert uses[("freeze.types", "Conv3d")]["selected"] is None   # module types need a live model
    assert uses[("rename", r"^old\.")]["selected"] is None        # source patterns need --source
    assert data["warnings"] == [f"[init] 'nothing_like_this.*' selects no target keys of {template}"]


def test_an_invalid_recipe_is_exit_2_naming_table_and_key(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("schema = 1\n[optimizer]\nlr = 'fast'\n")
    result = CliRunner().invoke(cli, ["recipe", "check", str(path)])
    assert result.exit_code == 2
    assert result.output == f"error: {path}: [optimizer] lr: expected a number, got a string 'fast'\n"


def test_every_shipped_recipe_is_valid() -> None:
    shipped = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))
    assert len(shipped) >= 5
    for path in shipped:
        recipe = load_recipe(path)
        assert recipe.description, path


def test_a_rule_an_earlier_one_shadows_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    # [init] takes the first matching rule: "head.*" first makes "head.weight" dead, which a formatter that
    # sorts keys (or a careless edit) does silently
    path.write_text('schema = 1\n[init]\n"head.*" = "zeros"\n"head.weight" = "normal:0.01"\n"body.*" = "ones"\n')
    result = check_recipe(load_recipe(path), model_names(Net(), "net"))
    assert [(use.pattern, use.shadowed) for use in result.uses] == [("head.*", False), ("head.weight", True),
                                                                    ("body.*", False)]
    assert result.warnings() == ["[init] 'head.weight' never applies: the first rule that matches a key wins, and "
                                 "an earlier rule takes every key it selects (keep the table's order)"]
