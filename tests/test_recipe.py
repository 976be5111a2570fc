"""Reading recipes: every table, key and type checked, errors naming the file, table and key."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import ckptsurgeon as cs
import ckptsurgeon.cli.transfer_cmd  # noqa: F401  (registers the command)
from ckptsurgeon.cli import cli
from ckptsurgeon.errors import RecipeError
from ckptsurgeon.options import FreezeOptions, GroupRule, UnfreezeStage
from ckptsurgeon.recipe import load_recipe, prefix_rule

FULL = """
schema = 1
description = "everything"

[source]
container = "ema"

[rename]
rules = [["^module\\\\.", ""], ["^head\\\\.", "classifier."]]
prefixes = { "layers.{}.attention." = "blocks.{}.attn.", "tok_embeddings" = "embed" }

[copy]
"backbone." = ["rgb.backbone.", "depth.backbone."]
"stem." = "rgb.stem."

[match]
order_fallback = true
seed = 3
disable = ["regroup"]

[resize]
"yolo_head_P*" = "yolo_head:3"

[init]
"feat*_att.*" = "kaiming"

[gates]
strict = true
allow_unused = ["fc.*"]
allow_new = ["feat*_att.*"]
min_coverage = 0.5

[freeze]
patterns = ["backbone"]
types = ["BatchNorm2d"]
transferred = true
batchnorm = "frozen"
mode = "lr_zero"

[[unfreeze]]
epoch = 50
patterns = ["backbone"]
group = "backbone"

[[unfreeze]]
epoch = 10
patterns = ["neck"]

[optimizer]
lr = 0.01
weight_decay = 5e-4
no_weight_decay_norm_bias = false
layer_decay = 0.75

[[optimizer.groups]]
name = "backbone"
patterns = ["backbone"]
lr_scale = 0.1
weight_decay = 0
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_table_reads_into_the_options(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    recipe = load_recipe(path)
    plan, gates = recipe.transfer.plan, recipe.transfer.gates
    assert recipe.description == "everything"
    assert recipe.path == str(path) and recipe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert recipe.transfer.container == "ema" and recipe.transfer.trust is False
    assert plan.rename[:2] == (("^module\\.", ""), ("^head\\.", "classifier."))
    assert plan.copy == ("backbone.=rgb.backbone.", "backbone.=depth.backbone.", "stem.=rgb.stem.")
    assert (plan.order_fallback, plan.seed, plan.disable) == (True, 3, ("regroup",))
    assert plan.resize == ("yolo_head_P*=yolo_head:3",) and plan.init == ("feat*_att.*=kaiming",)
    assert (gates.strict, gates.allow_unused, gates.allow_new, gates.min_coverage) == (
        True, ("fc.*",), ("feat*_att.*",), 0.5)
    assert recipe.freeze == FreezeOptions(
        freeze=("backbone",), freeze_types=("BatchNorm2d",), freeze_transferred=True, batchnorm="frozen",
        mode="lr_zero", unfreeze=(UnfreezeStage(10, ("neck",)), UnfreezeStage(50, ("backbone",), "backbone")),
        lr=0.01, weight_decay=5e-4, groups=(GroupRule("backbone", ("backbone",), 0.1, 0.0),), layer_decay=0.75,
        no_weight_decay_norm_bias=False)


def test_prefix_tables_rename_like_torchtune() -> None:
    regex, replacement = prefix_rule("layers.{}.attention.", "blocks.{}.attn.")
    assert re.sub(regex, replacement, "layers.12.attention.wq.weight") == "blocks.12.attn.wq.weight"
    assert re.sub(regex, replacement, "xlayers.1.attention.wq") == "xlayers.1.attention.wq"
    regex, replacement = prefix_rule("tok_embeddings", "embed")
    assert re.sub(regex, replacement, "tok_embeddings.weight") == "embed.weight"
    assert re.sub(regex, replacement, "tok_embeddings_extra.weight") == "tok_embeddings_extra.weight"
    regex, replacement = prefix_rule("layers.{}.mlp.{}.", "blocks.{}.ffn.{}.")
    assert re.sub(regex, replacement, "layers.3.mlp.0.weight") == "blocks.3.ffn.0.weight"


def test_prefix_tables_drive_a_transfer(tmp_path: Path) -> None:
    source = torch.nn.Module()
    source.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
    target = torch.nn.Module()
    target.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
    path = write(tmp_path, 'schema = 1\n[rename]\nprefixes = { "layers.{}." = "blocks.{}." }\n')
    report = cs.transfer(source.state_dict(), target, recipe=path)
    assert {s.strategy for s in report.plan.steps} == {"rename"}
    assert torch.equal(target.blocks[1].weight, source.layers[1].weight)
    assert report.recipe is not None and report.recipe.path == str(path)


@pytest.mark.parametrize("text, where, fragment", [
    ("schema = 1\n[freeze]\nbatchnrom = 'eval'\n", "[freeze] batchnrom", "unknown key"),
    ("schema = 1\n[freezing]\npatterns = []\n", "top level freezing", "unknown key"),
    ("schema = 1\n[freeze]\nbatchnorm = 'evl'\n", "[freeze] batchnorm", "expected one of eval, frozen, train"),
    ("schema = 1\n[freeze]\npatterns = 'backbone'\n", "[freeze] patterns", "expected an array"),
    ("schema = 1\n[freeze]\npatterns = [1]\n", "[freeze] patterns", "list of strings"),
    ("schema = 1\n[match]\nseed = true\n", "[match] seed", "expected an integer"),
    ("schema = 1\n[match]\ndisable = ['exact']\n", "[match] disable", "not a pass that can be switched off"),
    ("schema = 1\n[gates]\nmin_coverage = 1.5\n", "[gates] min_coverage", "between 0 and 1"),
    ("schema = 1\n[resize]\n'head.*' = 'stretch'\n", "[resize] head.*", "stretch"),
    ("schema = 1\n[init]\n'head.*' = 'normal:x'\n", "[init] head.*", "normal:x"),
    ("schema = 1\n[rename]\nrules = [['(unclosed', 'x']]\n", "[rename] rules", "invalid regular expression"),
    ("schema = 1\n[rename]\nrules = [['a']]\n", "[rename] rules", "[regex, replacement] pair"),
    ("schema = 1\n[rename]\nprefixes = { 'a.{}.' = 'b.' }\n", "[rename] prefixes", "same number of '{}'"),
    ("schema = 1\n[copy]\n'backbone.' = 'rgb'\n", "[copy] backbone.", "end both prefixes with '.'"),
    ("schema = 1\n[copy]\n'backbone.' = []\n", "[copy] backbone.", "a target prefix or a list"),
    ("schema = 1\n[source]\ntrust = true\n", "[source] trust", "--trust on the command line"),
    ("schema = 1\n[[unfreeze]]\npatterns = ['a']\n", "[unfreeze][0] epoch", "missing"),
    ("schema = 1\n[[unfreeze]]\nepoch = 5\npatterns = ['a']\ngroup = 'nope'\n", "[unfreeze][0] group",
     "no [[optimizer.groups]] is named 'nope'"),
    ("schema = 1\n[[optimizer.groups]]\nname = 'default'\npatterns = ['a']\n", "[optimizer] groups",
     "everything no pattern selects"),
    ("schema = 1\n[optimizer]\nlr = -1\n", "[optimizer] lr", "positive"),
    ("schema = 1\n[freeze]\npatterns = ['re:(']\n", "[freeze] patterns", "invalid regular expression"),
    ("schema = 1\nfreeze = 3\n", "[freeze]", "expected a table"),
    ("schema = 2\n", "schema = 2", "reads schema = 1"),
    ("[freeze]\n", "top level schema", "missing"),
    ("schema = 1\n[freeze\n", "not a valid TOML file", ""),
])
def test_bad_recipes_name_the_file_table_and_key(tmp_path: Path, text: str, where: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and where in message and fragment in message


def test_a_bad_recipe_is_one_line_and_exit_2_on_the_cli(tmp_path: Path) -> None:
    recipe = write(tmp_path, "schema = 1\n[gates]\nstrickt = true\n")
    source = tmp_path / "a.safetensors"
    cs.write_state_dict(source, torch.nn.Linear(2, 2).state_dict())
    result = CliRunner().invoke(cli, ["transfer", str(source), "--target", str(source), "--dry-run",
                                      "--recipe", str(recipe)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {recipe}: [gates] strickt: unknown key (see recipes/README.md for the schema)"


def test_command_line_rules_go_first_and_single_values_replace_the_recipes(tmp_path: Path) -> None:
    source = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    template = torch.nn.Module()
    template.a = torch.nn.Linear(3, 3)
    template.b = torch.nn.Linear(3, 3)
    src, tpl, out = tmp_path / "s.safetensors", tmp_path / "t.safetensors", tmp_path / "o.safetensors"
    cs.write_state_dict(src, source.state_dict())
    cs.write_state_dict(tpl, template.state_dict())
    # The recipe maps 0 -> a and 1 -> b; the command line's rules come first and swap them (the recipe's
    # rules then see no "0." or "1." name); --seed replaces the recipe's seed.
    recipe = write(tmp_path, 'schema = 1\n[rename]\nrules = [["^0\\\\.", "a."], ["^1\\\\.", "b."]]\n'
                             '[match]\nseed = 5\n[gates]\nmin_coverage = 0.1\n')
    result = CliRunner().invoke(cli, ["transfer", str(src), "--target", str(tpl), "-o", str(out), "--recipe",
                                      str(recipe), "--rename", r"^0\.=b.", "--rename", r"^1\.=a.", "--seed", "9", "--report",
                                      str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads((tmp_path / "r.json").read_text())
    assert data["options"]["rename"] == [r"^0\.=b.", r"^1\.=a.", [r"^0\.", "a."], [r"^1\.", "b."]]
    assert data["options"]["seed"] == 9
    assert data["recipe"] == {"path": str(recipe), "sha256": hashlib.sha256(recipe.read_bytes()).hexdigest()}
    assert f"recipe: {recipe}" in result.output
    written = load_file(out)
    assert torch.equal(written["b.weight"], source[0].weight) and torch.equal(written["a.weight"], source[1].weight)


def test_library_arguments_layer_over_a_recipe(tmp_path: Path) -> None:
    source = torch.nn.Sequential(torch.nn.Linear(3, 3))
    target = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    recipe = write(tmp_path, "schema = 1\n[gates]\nstrict = true\nallow_new = ['1.weight']\n")
    with pytest.raises(cs.GateFailed):
        cs.transfer(source.state_dict(), target, recipe=recipe)
    report = cs.transfer(source.state_dict(), target, recipe=recipe, allow_new=["1.bias"])
    assert report.counts().new == 2
    with pytest.raises(cs.MappingError, match="either recipe= or options="):
        cs.transfer(source.state_dict(), target, recipe=recipe, options=cs.TransferOptions())
