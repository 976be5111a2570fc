"""Transfer fidelity on stand-ins with real module names (issue 6), scored by value against ground truth.

The scenarios and their ground truth live in fidelity_scenarios.py. ``test_transfer_fidelity`` is the target:
zero wrong and zero missed on every scenario (undecidable keys count as ambiguous, neither), an ambiguity
reported exactly where the edit is undecidable. The other tests check the scenarios and the scoring themselves.
"""

from __future__ import annotations

from typing import Callable

import pytest

from fidelity_scenarios import (INITIAL, SCENARIOS, Prepared, Scenario, classify, prepare, score_ckptsurgeon,
                                score_exact_name_loop, scored, trace)

BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
TABLE_ROWS = ("SE-ResNet", "stage grows by one block", "SE inside a Multi_Concat_Block's cv3",
              "block of another kind inserted mid-stage", "backbone wrapped by a detector",
              "library renames and regroups")
ids = [scenario.name for scenario in SCENARIOS]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Scenario], Prepared]:
    """Seeded checkpoints and ground truths, built once per scenario for the whole module."""
    cache: dict[str, Prepared] = {}
    directory = tmp_path_factory.mktemp("fidelity")

    def get(scenario: Scenario) -> Prepared:
        if scenario.name not in cache:
            cache[scenario.name] = prepare(scenario, directory)
        return cache[scenario.name]
    return get


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids)
def test_transfer_fidelity(scenario: Scenario, prepared) -> None:
    score = score_ckptsurgeon(prepared(scenario))
    undecidable = bool(prepared(scenario).undecidable)
    problems = [f"{len(keys)} {kind}: {score.explain(keys)}"
                for kind, keys in (("wrong", score.wrong), ("missed", score.missed)) if keys]
    if score.ambiguity_reported != undecidable:
        problems.append("undecidable edit, but the report lists no ambiguity" if undecidable
                        else "decidable edit, but the report lists an ambiguity")
    if problems:
        pytest.fail(f"{scenario.what}:\n" + "\n".join(problems), pytrace=False)


def test_scenarios_cover_the_issue_table() -> None:
    assert len(SCENARIOS) >= 12
    assert len(BY_NAME) == len(SCENARIOS), "scenario names must be unique"
    assert sorted(s.row for s in SCENARIOS if s.row) == sorted(TABLE_ROWS)
    assert sum(bool(s.alternatives) for s in SCENARIOS) >= 3, "undecidable scenarios are part of the set"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=ids)
def test_ground_truth_is_consistent(scenario: Scenario, prepared) -> None:
    ready = prepared(scenario)
    source = {name: tuple(t.shape) for name, t in ready.source_state.items()}
    target = ready.target_shapes
    truth = ready.truth
    assert list(truth) == list(target)
    for key, origin in truth.items():
        if origin is not None:
            assert source[origin] == target[key], key
    used = [origin for origin in truth.values() if origin is not None]
    assert len(used) == len(set(used)), "no source tensor is the true origin of two target keys"
    for alternative in ready.readings[1:]:   # undecidable: another edit, the same target names and shapes
        assert list(alternative) == list(target)
        assert alternative != truth
    assert bool(ready.undecidable) == bool(scenario.alternatives)


SCORING_CHECKED = ("yolov7_dark4_cv3_se", "hf_vit_norms_renamed", "dataparallel_resnet50_se_insert")


@pytest.mark.parametrize("name", SCORING_CHECKED)
def test_scoring_by_value(name: str, prepared) -> None:
    """Loading exactly the ground truth scores perfect; a tensor from the wrong source is caught as wrong,
    one left at its initial value as missed."""
    scenario = BY_NAME[name]
    ready = prepared(scenario)
    model = scenario.build_target_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    truth = ready.truth
    model.load_state_dict({k: ready.source_state[s] for k, s in truth.items() if s is not None}, strict=False)
    found = {k: trace(v, initial[k], ready.by_value) for k, v in model.state_dict().items() if scored(k, v)}
    perfect = classify(found, truth, ready.undecidable)
    assert not perfect.wrong and not perfect.missed
    assert len(perfect.correct) + len(perfect.ambiguous) == len(found)
    loaded = [k for k in found if truth[k] is not None and k not in ready.undecidable]
    first, last = loaded[0], loaded[-1]
    found.update({first: INITIAL, last: truth[first]})
    broken = classify(found, truth, ready.undecidable)
    assert broken.missed == (first,) and broken.wrong == (last,)


def _prefixes(keys: tuple[str, ...], depth: int) -> set[str]:
    return {".".join(key.split(".")[:depth]) for key in keys}


def test_exact_name_loop_reproduces_the_issue_table(prepared) -> None:
    """The loop's column of the issue's table, on these stand-ins."""
    for name in ("se_resnet50", "resnet50_layer3_append"):
        loop = score_exact_name_loop(prepared(BY_NAME[name]))
        assert not loop.wrong and not loop.missed, name
    cv3 = score_exact_name_loop(prepared(BY_NAME["yolov7_dark4_cv3_se"]))
    assert _prefixes(cv3.wrong, 5) == {"backbone.dark4.1.cv3.3"}
    assert _prefixes(cv3.missed, 5) == {"backbone.dark4.1.cv3.4"}
    other_kind = score_exact_name_loop(prepared(BY_NAME["resnet50_layerscale_block_mid"]))
    assert _prefixes(other_kind.wrong, 2) == {"layer3.4", "layer3.5", "layer3.3"}
    wrapped = score_exact_name_loop(prepared(BY_NAME["detector_wraps_backbone"]))
    assert _prefixes(wrapped.missed, 2) == {"body.backbone"} and not wrapped.wrong
    vit = score_exact_name_loop(prepared(BY_NAME["hf_vit_regrouped"]))
    assert _prefixes(vit.correct, 1) == {"embeddings", "layernorm"}


def test_undecidable_keys_are_exactly_the_disputed_ones(prepared) -> None:
    append = prepared(BY_NAME["resnet50_layer3_append"]).undecidable
    assert _prefixes(tuple(append), 2) == {f"layer3.{i}" for i in range(1, 7)}   # layer3.0 has a downsample
    conv = prepared(BY_NAME["yolov7_official_identical_conv"]).undecidable
    assert _prefixes(tuple(conv), 2) == {"model.4", "model.5", "model.6"}       # later indices shift: decidable
    norms = prepared(BY_NAME["hf_vit_norms_renamed"]).undecidable
    assert {key.split(".")[2] for key in norms} == {"norm1", "norm2"}
    assert len(norms) == 12 * 2 * 2
