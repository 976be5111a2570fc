"""Property tests of make_plan over generated models edited at every depth (see tests/treegen.py).

Ground truth comes from how each edit was made: a target tensor's true source is the tensor of the same
hidden module identity and name, where the shapes agree. Asserted for every generated pair:

- every target key has one step, every source key is used or listed once as unused (the plan invariant);
- zero wrong: every copy comes from the true source;
- zero missed: every target tensor with a true source loads from it, outside the places the generator
  recorded as undecidable (identical modules inserted among identical ones, identical leaves renamed to
  unrelated names), where the tensors count as disputed, neither wrong nor missed;
- an ambiguity is reported exactly at the undecidable places, and nowhere else;
- never worse than the exact-name loop: a tensor the loop fills correctly loads from that source.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence, TypeVar

import random
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from ckptsurgeon.match import make_plan
from ckptsurgeon.plan import COPY, EXACT, INIT, RESIZE, Plan

import treegen
from treegen import Builder, Case, draw_case, flatten

T = TypeVar("T")

PROPERTY_SETTINGS = settings(max_examples=250, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class DrawChooser:
    """Choices drawn from hypothesis (they shrink towards the first option, 'no', and small numbers)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def pick(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(list(options)))

    def chance(self, percent: int) -> bool:
        return self.data.draw(st.integers(0, 99)) >= 100 - percent


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(list(options))

    def chance(self, percent: int) -> bool:
        return self.rng.random() * 100 < percent


# ---------------------------------------------------------------------------------------------- checks

def check_plan_invariant(case: Case, plan: Plan) -> None:
    assert [step.target for step in plan.steps] == list(case.target)
    used = {step.source for step in plan.steps if step.action in (COPY, RESIZE)}
    unused = Counter(u.source for u in plan.unused)
    assert not [k for k, n in unused.items() if n > 1], "listed twice as unused"
    assert not used & set(unused), f"both used and unused: {sorted(used & set(unused))}"
    assert set(case.source) == used | set(unused), set(case.source) ^ (used | set(unused))
    assert not [step for step in plan.steps if step.action == RESIZE]


def outcome(case: Case, plan: Plan) -> dict[str, list[str]]:
    """Target keys by verdict: correct, wrong, missed, disputed."""
    out: dict[str, list[str]] = {"correct": [], "wrong": [], "missed": [], "disputed": []}
    for step in plan.steps:
        truth = case.truth[step.target]
        got = step.source if step.action == COPY else None
        if step.target in case.disputed:
            verdict = "disputed"
        elif got == truth:
            verdict = "correct"
        elif got is not None:
            verdict = "wrong"
        else:
            verdict = "missed"
        out[verdict].append(f"{step.target} <- {got} (truth {truth})")
    return out


def check_fidelity(case: Case, plan: Plan) -> None:
    verdicts = outcome(case, plan)
    assert not verdicts["wrong"], "wrong: " + "; ".join(verdicts["wrong"])
    assert not verdicts["missed"], "missed: " + "; ".join(verdicts["missed"])


def check_ambiguity_exactly_where_undecidable(case: Case, plan: Plan) -> None:
    flagged = {a.container for a in plan.ambiguities}
    assert flagged == case.undecidable, f"reported {sorted(flagged)}, undecidable {sorted(case.undecidable)}"


def check_never_worse_than_the_exact_loop(case: Case, plan: Plan) -> None:
    steps = {step.target: step for step in plan.steps}
    for name, spec in case.target.items():
        loop_right = name in case.source and case.source[name].shape == spec.shape and case.truth[name] == name
        if loop_right and name not in case.disputed:
            assert steps[name].action == COPY and steps[name].source == name, f"{name}: the loop loads it, {steps[name]}"


def move_is_allowed(case: Case, move: tuple[str, str] | None) -> bool:
    from ckptsurgeon.match.prefix import moved_name

    def mapping(m):
        return [moved_name(name, m) if m else name for name in case.source]
    return any(mapping(move) == mapping(allowed) for allowed in allowed_moves(case))


def allowed_moves(case: Case) -> set:
    """The DataParallel wrapper, or (when most keys moved) one of the generator's wraps."""
    moves = {("", treegen.DP) if case.prefix else None}
    source_paths, target_paths = treegen.paths_of(case.edits.source), treegen.paths_of(case.edits.target)
    for ident in case.edits.wrapped:
        moves.add((source_paths[ident] + ".", case.prefix + target_paths[ident] + "."))
    return moves


def planned(data: st.DataObject) -> tuple[Case, Plan]:
    case = draw_case(DrawChooser(data))
    note(case.describe())
    return case, make_plan(case.source, case.target)


# ---------------------------------------------------------------------------------------------- properties

@PROPERTY_SETTINGS
@given(st.data())
def test_zero_wrong_and_zero_missed_over_edits_at_every_depth(data):
    case, plan = planned(data)
    check_plan_invariant(case, plan)
    check_fidelity(case, plan)


@PROPERTY_SETTINGS
@given(st.data())
def test_ambiguity_is_reported_exactly_where_the_edit_is_undecidable(data):
    case, plan = planned(data)
    check_ambiguity_exactly_where_undecidable(case, plan)


@PROPERTY_SETTINGS
@given(st.data())
def test_never_worse_than_the_exact_name_loop(data):
    case, plan = planned(data)
    check_never_worse_than_the_exact_loop(case, plan)


@PROPERTY_SETTINGS
@given(st.data())
def test_prefix_move_is_only_the_dataparallel_wrapper(data):
    """The only prefix moves are the ``module.`` wrapper (found even when edits shift most indices) and the
    generator's own wraps; index shifts are never taken for a move."""
    case, plan = planned(data)
    assert move_is_allowed(case, plan.prefix_move), plan.prefix_move


@PROPERTY_SETTINGS
@given(st.data())
def test_ambiguity_rename_rules_state_the_other_reading(data):
    """An ambiguity's --rename rules are accepted, change which source feeds some target, and load as much as
    the plan did where two alignments tie (the other reading is as good; only the evidence cannot tell them
    apart), more where the plan left identical modules new."""
    case, plan = planned(data)
    for ambiguity in plan.ambiguities:
        if ambiguity.rename_rule is None:
            continue
        rules = re.findall(r"--rename '([^']*)'", ambiguity.rename_rule)
        assert rules, ambiguity.rename_rule
        other = make_plan(case.source, case.target, rename=rules)   # raises MappingError if the rules collide
        assert sources_of(other) != sources_of(plan), f"{ambiguity.rename_rule} changes nothing"
        if ambiguity.loads_nothing:   # the plan left the identical modules new; their reading loads them
            assert loaded(other) > loaded(plan), f"{ambiguity.rename_rule}: {loaded(other)} loaded, not more"
        else:                         # two alignments that tie: the other loads exactly as much
            assert loaded(other) == loaded(plan), f"{ambiguity.rename_rule}: {loaded(other)} loaded, not {loaded(plan)}"


def loaded(plan: Plan) -> int:
    return sum(step.action == COPY for step in plan.steps)


def sources_of(plan: Plan) -> dict[str, str | None]:
    return {step.target: step.source if step.is_transferred else None for step in plan.steps}


@PROPERTY_SETTINGS
@given(st.data())
def test_planning_is_deterministic(data):
    case = draw_case(DrawChooser(data))
    assert make_plan(case.source, case.target) == make_plan(dict(case.source), dict(case.target))


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_unedited_model_copies_everything_exactly(data):
    """target == source: every step an exact COPY, nothing unused, nothing ambiguous (float16 -> float32 too)."""
    ch = DrawChooser(data)
    import itertools
    model = Builder(ch, itertools.count()).model()
    source, _ = flatten(model, "", ch.pick(("float32", "float16")))
    for target in (source, flatten(model, "", "float32")[0]):
        plan = make_plan(source, target)
        assert all(step.action == COPY and step.strategy == EXACT and step.source == step.target
                   for step in plan.steps), [s for s in plan.steps if s.action != COPY or s.strategy != EXACT]
        assert plan.unused == ()
        assert plan.ambiguities == ()


# Seeds whose cases failed while the planner was built (a nested rename shifting its parents' alignment, a
# regrouped leaf taken by a move, a resized leaf left out of its regroup, counters of resized norms, a
# wrapper prefix losing to a sub-tree move): pinned, as @example pins a hypothesis draw.
FOUND = (1008, 1011, 1104, 1260, 1418, 1436, 1777, 2206, 2286, 2362, 2432, 2660, 4377, 4648, 5145, 5534, 5949)


@pytest.mark.parametrize("seed", [*range(300), *FOUND])
def test_seeded_cases(seed):
    """A fixed spread of cases, the same every run (the hypothesis tests search beyond it)."""
    case = draw_case(RandomChooser(seed))
    plan = make_plan(case.source, case.target)
    try:
        check_plan_invariant(case, plan)
        check_fidelity(case, plan)
        check_ambiguity_exactly_where_undecidable(case, plan)
        check_never_worse_than_the_exact_loop(case, plan)
        assert move_is_allowed(case, plan.prefix_move), plan.prefix_move
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{case.describe()}") from None


# ---------------------------------------------------------------------------------------------- scale

def _scale_models(count: int):
    import itertools
    ch = RandomChooser(7)
    ids = itertools.count()
    builder = Builder(ch, ids)
    root = treegen.Mod(next(ids), "root")
    for name in ("backbone", "neck", "head"):
        items = []
        for _ in range(count):
            items.append(treegen.twin(items[-1], ids) if items and ch.chance(40) else
                         builder.composite(ch.pick(("conv_bn", "block")), ch.pick(treegen.CHANNELS), ch.pick(treegen.CHANNELS)))
        root.named[name] = treegen.Mod(next(ids), "seq", seq=items)
    target = root.clone()
    inserted = builder.composite("se", 12, 12)     # 12 channels: a signature no generated module has
    target.named["neck"].seq.insert(count // 2, inserted)
    return root, target, inserted


@pytest.mark.parametrize("prefix", ["", treegen.DP])
def test_twenty_thousand_keys_with_one_insertion(prefix):
    source_model, target_model, inserted = _scale_models(970)
    source, src_keys = flatten(source_model, "", "float16")
    target, tgt_keys = flatten(target_model, prefix, "float32")
    assert 19_000 < len(source) < 30_000
    plan = make_plan(source, target)
    new = {key for (ident, _), key in tgt_keys.items() if ident in inserted.idents()}
    truth = {key: src_keys.get(owner) for owner, key in tgt_keys.items()}
    for step in plan.steps:
        if step.target in new:
            assert step.action == INIT
        else:
            assert step.action == COPY and step.source == truth[step.target], step
    assert plan.unused == ()


_SUBPROCESS = """
import json, sys
sys.path.insert(0, {tests!r})
import test_plan_properties as t
from ckptsurgeon.match import make_plan
out = []
for seed in range(40):
    case = t.draw_case(t.RandomChooser(seed))
    out.append(repr(make_plan(case.source, case.target)))
print(json.dumps(out))
"""


def test_planning_does_not_depend_on_the_hash_seed():
    """Deterministic across processes too (signatures are hashes; str hashing is salted per process)."""
    script = _SUBPROCESS.format(tests=str(Path(__file__).parent))
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout))
    assert results[0] == results[1]
