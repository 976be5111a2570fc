"""Finding and choosing the state dict inside an unpickled object; wrapper prefixes. No files needed,
except where the CLI's ``--containers`` listing is checked."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import ckptsurgeon.cli.inspect_cmds  # noqa: F401  (registers the commands)
from ckptsurgeon.cli import cli
from ckptsurgeon.errors import ContainerError
from ckptsurgeon.io import open_checkpoint
from ckptsurgeon.io.containers import Candidate, choose_candidate, find_candidates, module_state
from ckptsurgeon.io.prefixes import strip_wrapper_prefixes
from ckptsurgeon.io.refs import TensorRef
from ckptsurgeon.io.unpickler import Stub


def ref(*shape: int, dtype: str = "float32") -> TensorRef:
    return TensorRef("0", 0, shape, (1,) * len(shape), dtype)


def state(*names: str) -> dict[str, TensorRef]:
    return {name: ref(2) for name in names}


def paths(candidates: list[Candidate]) -> list[str]:
    return [c.path for c in candidates]


# --- finding candidates ----------------------------------------------------------------------------


def test_root_state_dict() -> None:
    root = collections.OrderedDict(state("a.weight", "a.bias"))
    (candidate,) = find_candidates(root)
    assert (candidate.path, candidate.kind, list(candidate.tensors)) == ("", "state_dict", ["a.weight", "a.bias"])


def test_non_tensor_values_beside_tensors_are_ignored() -> None:
    (candidate,) = find_candidates({"w": ref(3), "note": "hello", "step": 3})
    assert list(candidate.tensors) == ["w"]


def test_optimizer_and_scheduler_are_skipped() -> None:
    root = {"model": state("w"), "optimizer": {"state": {0: {"exp_avg": ref(2)}}, "param_groups": []},
            "lr_scheduler": {"last": ref(1)}, "scaler": {"scale": ref(1)}, "epoch": 1}
    assert paths(find_candidates(root)) == ["model"]


def test_nested_containers_get_dotted_paths() -> None:
    root = {"checkpoint": {"student": state("s"), "teacher": state("t")}, "config": {"lr": 0.1}}
    assert paths(find_candidates(root)) == ["checkpoint.student", "checkpoint.teacher"]


def test_depth_is_bounded() -> None:
    deep: dict = state("w")
    for level in range(6):
        deep = {f"l{level}": deep}
    assert find_candidates(deep) == []


def stub_module(cls_name: str, parameters: dict, buffers: dict, modules: dict, non_persistent: set = frozenset()) -> Stub:
    cls = type(cls_name, (Stub,), {"stub_global": f"pkg.{cls_name}"})
    module = cls()
    module.__setstate__({"_parameters": collections.OrderedDict(parameters), "_buffers": collections.OrderedDict(buffers),
                         "_modules": collections.OrderedDict(modules), "_non_persistent_buffers_set": set(non_persistent),
                         "training": True})
    return module


def test_module_state_follows_nn_module_state_dict_order() -> None:
    child = stub_module("Linear", {"weight": ref(2, 2), "bias": None}, {}, {})
    norm = stub_module("BatchNorm", {"weight": ref(2)}, {"running_mean": ref(2), "scratch": ref(2)}, {},
                       non_persistent={"scratch"})
    root = stub_module("Net", {"scale": ref(1)}, {"anchors": ref(3)}, {"fc": child, "act": None, "bn": norm})
    assert list(module_state(root)) == ["scale", "anchors", "fc.weight", "bn.weight", "bn.running_mean"]


def test_stub_module_is_a_module_candidate() -> None:
    model = stub_module("Net", {"w": ref(2)}, {}, {})
    root = {"epoch": 5, "model": model, "ema": None, "optimizer": None}
    (candidate,) = find_candidates(root)
    assert (candidate.path, candidate.kind, list(candidate.tensors)) == ("model", "module", ["w"])


def test_stub_dict_subclass_items_are_a_state_dict() -> None:
    cls = type("AttrDict", (Stub,), {"stub_global": "pkg.AttrDict"})
    inner, outer = cls(), cls()
    for name, value in state("a", "b").items():
        inner[name] = value
    outer["model"] = inner
    outer["epoch"] = 3
    (candidate,) = find_candidates(outer)
    assert (candidate.path, list(candidate.tensors)) == ("model", ["a", "b"])
    assert paths(find_candidates({"w": ref(1), "nested": inner})) == ["nested"]


def test_real_module_uses_its_state_dict() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    (candidate,) = find_candidates({"model": model})
    assert candidate.kind == "module"
    assert list(candidate.tensors) == ["0.weight", "0.bias"]


# --- choosing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys, chosen", [
    (["ema", "model"], "model"),
    (["model", "state_dict"], "state_dict"),
    (["ema", "model_ema", "net"], "net"),
    (["teacher", "student"], "student"),
    (["teacher", "other"], "teacher"),  # neither is a usual name: file order
    (["model_ema", "ema"], "model_ema"),  # only EMA copies: the first of them
])
def test_choice_order(keys: list[str], chosen: str) -> None:
    candidates = find_candidates({key: state("w") for key in keys})
    best, reason = choose_candidate(candidates, None, "f.pt")
    assert best.path == chosen
    assert chosen in reason


def test_root_state_dict_wins() -> None:
    candidates = [Candidate("model", "state_dict", state("a")), Candidate("", "state_dict", state("b"))]
    best, _ = choose_candidate(candidates, None, "f.pt")
    assert best.path == ""


def test_ema_chosen_by_name() -> None:
    candidates = find_candidates({"model": state("w"), "ema": state("w")})
    best, reason = choose_candidate(candidates, "ema", "f.pt")
    assert best.path == "ema"
    assert "--container" in reason


def test_unknown_container_lists_what_there_is() -> None:
    candidates = find_candidates({"model": state("w"), "ema": state("w")})
    with pytest.raises(ContainerError, match=r"f\.pt: no container 'emma'; this file holds: model, ema"):
        choose_candidate(candidates, "emma", "f.pt")


def test_no_candidates() -> None:
    with pytest.raises(ContainerError, match=r"f\.pt: no tensors found"):
        choose_candidate([], None, "f.pt")


# --- wrapper prefixes --------------------------------------------------------------------------------


@pytest.mark.parametrize("keys, expected, stripped", [
    (["module.a", "module.b.c"], ["a", "b.c"], ("module.",)),
    (["_orig_mod.a", "_orig_mod.b"], ["a", "b"], ("_orig_mod.",)),
    (["_orig_mod.module.a"], ["a"], ("_orig_mod.", "module.")),
    (["module.a", "b"], ["module.a", "b"], ()),
    (["model.a", "model.b"], ["model.a", "model.b"], ()),
    (["modules.a", "module_b"], ["modules.a", "module_b"], ()),
    ([], [], ()),
])
def test_strip_wrapper_prefixes(keys: list[str], expected: list[str], stripped: tuple[str, ...]) -> None:
    tensors = {key: i for i, key in enumerate(keys)}
    out, done = strip_wrapper_prefixes(tensors)
    assert list(out) == expected
    assert list(out.values()) == list(range(len(keys)))
    assert done == stripped


segment = st.sampled_from(["module", "_orig_mod", "model", "backbone", "0", "1", "weight", "bias"])
key = st.lists(segment, min_size=1, max_size=4).map(".".join)


@given(st.lists(key, min_size=1, max_size=12, unique=True))
def test_strip_keeps_every_key_exactly_once(keys: list[str]) -> None:
    tensors = {name: i for i, name in enumerate(keys)}
    out, stripped = strip_wrapper_prefixes(tensors)
    assert list(out.values()) == list(range(len(keys)))  # nothing lost, nothing merged, order kept
    prefix = "".join(stripped)
    assert [prefix + name for name in out] == keys
    # stripping stops only when no single wrapper prefix is carried by every key
    assert not (out and any(all(name.startswith(p) for name in out) for p in ("module.", "_orig_mod.")))


# --- the same, end to end -------------------------------------------------------------------------------


def test_containers_in_info_and_cli(tmp_path: Path) -> None:
    sd = torch.nn.Linear(2, 3).state_dict()
    torch.save({"model": sd, "ema": {"module": {"module." + k: v for k, v in sd.items()}}, "epoch": 1,
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "ck.pt")
    with open_checkpoint(tmp_path / "ck.pt") as checkpoint:
        summary = [(c.path, c.kind, c.tensors, c.chosen) for c in checkpoint.info.containers]
    assert summary == [("model", "state_dict", 2, True), ("ema.module", "state_dict", 2, False)]
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "ck.pt"), "--containers"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "container                kind        tensors",
        "model                    state_dict        2  <- used",
        "ema.module               state_dict        2",
        "container 'model' chosen before ema.module (pick another with --container)",
    ]
    chosen = CliRunner().invoke(cli, ["inspect", str(tmp_path / "ck.pt"), "--container", "ema.module", "--json"])
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["stripped_prefixes"] == ["module."]


def test_safe_unpickler_stub_has_no_behaviour() -> None:
    """A stand-in accepts construction, state, items and calls, and keeps them as data only."""
    cls = type("Thing", (Stub,), {"stub_global": "pkg.Thing"})
    thing = cls(1, 2, key=3)
    thing["a"] = 1
    thing.append(2)
    thing.__setstate__(({"x": 1}, {"y": 2}))
    called = thing("anything")
    assert isinstance(called, cls) and called is not thing
    assert thing.__dict__["_stub_items"] == {"a": 1}
    assert thing.__dict__["_stub_list"] == [2]
    assert (thing.x, thing.y) == (1, 2)
    assert repr(thing) == "<stand-in for pkg.Thing>"
