"""Property tests of make_plan over generated models whose modules carry a hidden identity.

A model is a tree: a few named top-level containers (``backbone``, ``neck``, ``head``), each an
``nn.Sequential``-like numbered list of modules, and sometimes a named top-level module (``stem``). A module
is one of a few kinds with its own tensor names; channel sizes come from a small set, and a module often
repeats its neighbour, so identical signatures sit side by side (the ambiguous cases). Every generated module
has an identity the planner never sees; side tables map each source and target key to (container, module,
relative name). The target is the source after random edits: modules removed and fresh modules inserted in
random containers at random places, sometimes a new named top-level module or a new container, sometimes a
``module.`` prefix on every target key (DataParallel), float16 into float32.

One rule keeps the edits recoverable: a module inserted into a container is never of a kind removed from
that same container (this subsumes "never insert where one was removed"). A removed module and a new one of
the same kind in one gap of the alignment is indistinguishable from one module modified in place (the planner
then rightly copies its equal-shaped tensors), and the alignment may slide identical neighbours so that the
gap is not where the edit was; a removed module and a new one of the same signature elsewhere is
indistinguishable from a move. With this rule every longest alignment of signatures pairs exactly the
survivors' signatures, so the invariants below can be exact.

Invariants 1-6 are the brief's; those marked (extra) come from DESIGN.md ("ambiguity is reported, never
guessed", "name agreement only breaks ties", "the rename rule that would state the other choice").
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence, TypeVar, Union

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from ckptsurgeon.match import make_plan
from ckptsurgeon.plan import COPY, EXACT, INIT, RESIZE, Plan, is_bookkeeping
from ckptsurgeon.specs import TensorSpec

T = TypeVar("T")

CHANNELS = (4, 8, 16)
KERNELS = (1, 3)
KINDS = ("conv", "conv_bn", "linear", "se", "block")
CONTAINERS = ("backbone", "neck", "head")
NEW_NAMED = ("extra", "neck_att")
NEW_CONTAINER = "aux"
BN = ("weight", "bias", "running_mean", "running_var")
DP = "module."

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALIGN_SETTINGS = settings(max_examples=120, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------- the models

def kind_tensors(kind: str, params: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Relative tensor name -> shape for one module of ``kind``."""
    if kind == "conv":
        o, i, k = params
        return {"weight": (o, i, k, k)}
    if kind == "conv_bn":
        o, i, k = params
        return {"conv.weight": (o, i, k, k), **{f"bn.{n}": (o,) for n in BN}, "bn.num_batches_tracked": ()}
    if kind == "linear":
        o, i = params
        return {"weight": (o, i), "bias": (o,)}
    if kind == "se":
        c, h = params
        return {"fc.0.weight": (h, c), "fc.2.weight": (c, h)}
    if kind == "block":   # a block with a numbered sub-container of its own
        o, i = params
        return {"cv1.conv.weight": (o, i, 1, 1), **{f"cv1.bn.{n}": (o,) for n in BN},
                "cv1.bn.num_batches_tracked": (), "m.0.weight": (o, o, 3, 3), "m.1.weight": (o, o, 1, 1)}
    raise ValueError(kind)


@dataclass(frozen=True)
class Module:
    ident: int
    kind: str
    params: tuple[int, ...]

    @property
    def tensors(self) -> dict[str, tuple[int, ...]]:
        return kind_tensors(self.kind, self.params)

    @property
    def sig(self) -> tuple:
        """Relative tensor names and shapes, counters left out."""
        return tuple(sorted((n, s) for n, s in self.tensors.items() if not is_bookkeeping(n)))


Entry = Union[Module, list]           # a named top-level module, or a numbered container of modules
Model = dict                          # top-level name -> Entry, in registration order


@dataclass(frozen=True)
class Owner:
    container: str | None   # the numbered container, or None for a named top-level module
    module: Module
    rel: str                # the tensor's name inside its module


@dataclass
class Case:
    source_model: Model
    target_model: Model
    prefix: str
    source: dict[str, TensorSpec]
    target: dict[str, TensorSpec]
    src_owner: dict[str, Owner]
    tgt_owner: dict[str, Owner]

    def describe(self) -> str:
        def show(model: Model) -> dict:
            out = {}
            for name, entry in model.items():
                mods = entry if isinstance(entry, list) else [entry]
                out[name] = [f"#{m.ident} {m.kind}{m.params}" for m in mods]
            return out
        return (f"source={show(self.source_model)}\ntarget={show(self.target_model)} prefix={self.prefix!r}\n"
                f"source_keys={ {k: v.shape for k, v in self.source.items()} }\n"
                f"target_keys={ {k: v.shape for k, v in self.target.items()} }")


def flatten(model: Model, prefix: str, dtype: str) -> tuple[dict[str, TensorSpec], dict[str, Owner]]:
    specs: dict[str, TensorSpec] = {}
    owners: dict[str, Owner] = {}

    def add(path: str, container: str | None, module: Module) -> None:
        for rel, shape in module.tensors.items():
            key = f"{prefix}{path}.{rel}"
            specs[key] = TensorSpec(key, shape, "int64" if is_bookkeeping(rel) else dtype)
            owners[key] = Owner(container, module, rel)

    for name, entry in model.items():
        if isinstance(entry, Module):
            add(name, None, entry)
        else:
            for index, module in enumerate(entry):
                add(f"{name}.{index}", name, module)
    return specs, owners


class Chooser(Protocol):
    def int(self, lo: int, hi: int) -> int: ...
    def pick(self, options: Sequence[T]) -> T: ...
    def chance(self, percent: int) -> bool: ...


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


def new_module(ch: Chooser, ids: Iterator[int], like: Module | None = None, allowed: Sequence[str] = KINDS) -> Module:
    """A fresh module; often a twin of ``like`` (same kind and shapes, another identity)."""
    if like is not None and like.kind in allowed and ch.chance(40):
        return Module(next(ids), like.kind, like.params)
    kind = ch.pick(allowed)
    if kind in ("conv", "conv_bn"):
        params = (ch.pick(CHANNELS), ch.pick(CHANNELS), ch.pick(KERNELS))
    else:
        params = (ch.pick(CHANNELS), ch.pick(CHANNELS))
    return Module(next(ids), kind, params)


def new_source(ch: Chooser, ids: Iterator[int], max_len: int = 6) -> Model:
    model: Model = {}
    if ch.chance(30):
        model["stem"] = new_module(ch, ids)
    for name in CONTAINERS:
        if name == CONTAINERS[0] or ch.chance(50):
            modules: list[Module] = []
            for _ in range(ch.int(1, max_len)):
                modules.append(new_module(ch, ids, modules[-1] if modules else None))
            model[name] = modules
    return model


def edit(ch: Chooser, ids: Iterator[int], source: Model) -> Model:
    """Remove and insert modules; sometimes add a named top-level module or a new container."""
    items: list[tuple[str, Entry]] = []
    removed_named: set[str] = set()
    for name, entry in source.items():
        if isinstance(entry, Module):
            if ch.chance(15):
                removed_named.add(entry.kind)
            else:
                items.append((name, entry))
            continue
        kept = [m for m in entry if not ch.chance(25)]
        if not kept:   # a container never disappears whole (its twin could be paired as a renamed sibling)
            kept = [entry[ch.int(0, len(entry) - 1)]]
        removed_kinds = {m.kind for m in entry if m not in kept}
        allowed = [k for k in KINDS if k not in removed_kinds]
        for _ in range(ch.int(0, 3) if allowed else 0):
            at = ch.int(0, len(kept))
            neighbour = kept[at - 1] if at and ch.chance(50) else kept[min(at, len(kept) - 1)]
            kept.insert(at, new_module(ch, ids, neighbour, allowed))
        items.append((name, kept))
    if ch.chance(25):
        at = ch.int(0, len(items))
        if ch.chance(50):
            name = ch.pick([n for n in NEW_NAMED if n not in source])
            items.insert(at, (name, new_module(ch, ids, allowed=[k for k in KINDS if k not in removed_named])))
        else:
            modules = []
            for _ in range(ch.int(1, 3)):
                modules.append(new_module(ch, ids, modules[-1] if modules else None))
            items.insert(at, (NEW_CONTAINER, modules))
    return dict(items)


def make_case(ch: Chooser, max_len: int = 6) -> Case:
    ids = itertools.count()
    source_model = new_source(ch, ids, max_len)
    target_model = edit(ch, ids, source_model)
    prefix = DP if ch.chance(30) else ""
    src_dtype = ch.pick(("float32", "float16"))
    source, src_owner = flatten(source_model, "", src_dtype)
    target, tgt_owner = flatten(target_model, prefix, "float32")
    return Case(source_model, target_model, prefix, source, target, src_owner, tgt_owner)


# ---------------------------------------------------------------------------------------------- invariants

def sig_counts(model: Model) -> dict[str, Counter]:
    return {name: Counter(m.sig for m in entry) for name, entry in model.items() if isinstance(entry, list)}


def survivors(case: Case) -> set[int]:
    def idents(model: Model) -> set[int]:
        out = set()
        for entry in model.values():
            out |= {m.ident for m in (entry if isinstance(entry, list) else [entry])}
        return out
    return idents(case.source_model) & idents(case.target_model)


def recoverable_modules(case: Case) -> set[int]:
    """Modules whose signature is unique within their container in both models (named top-level modules keep
    their name, so they count too)."""
    src, tgt = sig_counts(case.source_model), sig_counts(case.target_model)
    out = set()
    for name, entry in case.target_model.items():
        if isinstance(entry, Module):
            out.add(entry.ident)
            continue
        for m in entry:
            if src.get(name, Counter())[m.sig] == 1 and tgt[name][m.sig] == 1:
                out.add(m.ident)
    return out


def check_steps_cover_targets(case: Case, plan: Plan) -> None:
    """1. Every target key appears exactly once in plan.steps, in target order."""
    assert [step.target for step in plan.steps] == list(case.target)


def check_sources_accounted(case: Case, plan: Plan) -> None:
    """2. Every source key is used (COPY/RESIZE source) or listed exactly once as unused, never both."""
    used = {step.source for step in plan.steps if step.action in (COPY, RESIZE)}
    unused = Counter(u.source for u in plan.unused)
    assert used <= set(case.source), used - set(case.source)
    assert set(unused) <= set(case.source), set(unused) - set(case.source)
    assert not [k for k, n in unused.items() if n > 1], "listed twice as unused"
    assert not used & set(unused), f"both used and unused: {sorted(used & set(unused))}"
    missing = [k for k in case.source if k not in used and k not in unused]
    assert not missing, f"neither used nor unused: {missing}"
    for step in plan.steps:
        if step.action in (COPY, RESIZE):
            assert step.source_shape == case.source[step.source].shape
            assert step.source_dtype == case.source[step.source].dtype
        else:
            assert step.source is None or step.action == INIT


def check_copies_are_same_signature(case: Case, plan: Plan) -> None:
    """3. A COPY only joins modules of one signature, tensor name to same tensor name, equal shapes;
    with no --resize rules there are no RESIZE steps."""
    assert not [step for step in plan.steps if step.action == RESIZE]
    for step in plan.steps:
        if step.action != COPY:
            continue
        s, t = case.src_owner[step.source], case.tgt_owner[step.target]
        assert s.module.sig == t.module.sig, (
            f"{step.target} (#{t.module.ident} {t.module.kind}{t.module.params}) copied from {step.source} "
            f"(#{s.module.ident} {s.module.kind}{s.module.params}): signatures differ")
        assert s.rel == t.rel, f"{step.target} copied from {step.source}: another tensor of the module"
        assert step.source_shape == step.target_shape == case.target[step.target].shape
        assert step.target_dtype == case.target[step.target].dtype


def check_recoverable_modules(case: Case, plan: Plan) -> None:
    """4. A module whose signature is unique in its container in both models loads from itself, and whole."""
    steps = {step.target: step for step in plan.steps}
    recoverable = recoverable_modules(case)
    for key, step in steps.items():
        t = case.tgt_owner[key]
        if step.action == COPY and t.module.ident in recoverable:
            s = case.src_owner[step.source]
            assert s.module.ident == t.module.ident, (
                f"{key} (#{t.module.ident}) loaded from {step.source} (#{s.module.ident})")
    alive = survivors(case)
    for key, t in case.tgt_owner.items():
        if t.module.ident in alive and t.module.ident in recoverable and not is_bookkeeping(t.rel):
            assert steps[key].action == COPY, f"{key} (#{t.module.ident}, unique signature) not loaded: {steps[key]}"


def check_whole_modules(case: Case, plan: Plan) -> None:
    """7. (extra) Modules move whole: a target module is loaded entirely from one source module, or not at
    all; a source module feeds at most one target module; each container loads as many modules as survived
    (the longest alignment)."""
    steps = {step.target: step for step in plan.steps}
    by_module: dict[int, list[str]] = defaultdict(list)
    for key, owner in case.tgt_owner.items():
        by_module[owner.module.ident].append(key)
    fed_by: dict[int, int] = {}
    loaded_in: Counter = Counter()
    for ident, keys in by_module.items():
        actions = {steps[k].action for k in keys if not is_bookkeeping(case.tgt_owner[k].rel)}
        assert len(actions) == 1, f"module #{ident} partly loaded: {[(k, steps[k].action) for k in keys]}"
        if actions == {COPY}:
            sources = {case.src_owner[steps[k].source].module.ident for k in keys if steps[k].action == COPY}
            assert len(sources) == 1, f"module #{ident} mixes source modules {sources}"
            source_ident = sources.pop()
            s_container = next(case.src_owner[steps[k].source].container for k in keys if steps[k].action == COPY)
            assert s_container == case.tgt_owner[keys[0]].container, f"module #{ident} loaded from another container"
            assert source_ident not in fed_by, f"source module #{source_ident} feeds #{fed_by[source_ident]} and #{ident}"
            fed_by[source_ident] = ident
            loaded_in[case.tgt_owner[keys[0]].container] += 1
            counters = [k for k in keys if is_bookkeeping(case.tgt_owner[k].rel)]
            assert all(steps[k].action == COPY for k in counters), "a loaded module's counter was left behind"
    alive = survivors(case)
    for name, entry in case.target_model.items():
        if isinstance(entry, list):
            survived = sum(m.ident in alive for m in entry)
            assert loaded_in[name] == survived, f"container {name}: {loaded_in[name]} of {survived} survivors loaded"


def expected_move(case: Case) -> tuple[str, str] | None:
    return ("", DP) if case.prefix else None


def sources_of(plan: Plan) -> dict[str, str | None]:
    return {step.target: step.source if step.is_transferred else None for step in plan.steps}


def loaded(plan: Plan) -> int:
    return sum(step.action == COPY for step in plan.steps)


def check_all(case: Case, plan: Plan) -> None:
    check_steps_cover_targets(case, plan)
    check_sources_accounted(case, plan)
    check_copies_are_same_signature(case, plan)
    check_recoverable_modules(case, plan)
    check_whole_modules(case, plan)


# ---------------------------------------------------------------------------------------------- properties

@PROPERTY_SETTINGS
@given(st.data())
def test_plan_invariants_over_random_edits(data):
    """Invariants 1-4 (and 7) for every generated pair, DataParallel prefix and float16 source included."""
    case = make_case(DrawChooser(data))
    note(case.describe())
    plan = make_plan(case.source, case.target)
    check_all(case, plan)


@PROPERTY_SETTINGS
@given(st.data())
def test_prefix_move_is_only_the_dataparallel_wrapper(data):
    """(extra) The generator never moves a sub-tree: the only prefix move is the ``module.`` wrapper. Index
    shifts inside a container are structural alignment's job, not a 'prefix move' (``layers.0.`` ->
    ``layers.1.``); and the wrapper must be found even when an insertion shifts most indices."""
    case = make_case(DrawChooser(data))
    note(case.describe())
    plan = make_plan(case.source, case.target)
    assert plan.prefix_move == expected_move(case)


@PROPERTY_SETTINGS
@given(st.data())
def test_planning_is_deterministic(data):
    """6. The same input twice (fresh dicts) gives an equal plan."""
    case = make_case(DrawChooser(data))
    first = make_plan(case.source, case.target)
    second = make_plan(dict(case.source), dict(case.target))
    assert first == second


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_unedited_model_copies_everything_exactly(data):
    """5. target == source: every step an exact COPY, nothing unused, nothing ambiguous (also float16 ->
    float32, a cast)."""
    ch = DrawChooser(data)
    model = new_source(ch, itertools.count())
    source, _ = flatten(model, "", ch.pick(("float32", "float16")))
    for target in (source, flatten(model, "", "float32")[0]):
        plan = make_plan(source, target)
        assert all(step.action == COPY and step.strategy == EXACT and step.source == step.target
                   for step in plan.steps), [s for s in plan.steps if s.action != COPY or s.strategy != EXACT]
        assert plan.unused == ()
        assert plan.ambiguities == ()


def longest_alignments(a: Sequence, b: Sequence) -> tuple[int, int, int]:
    """(length of the longest order-keeping alignments of ``a`` and ``b``, how many distinct ones there are
    (capped at 2), the most index-keeping pairs one of them has). Quadratic-cubic: for small test inputs."""
    n, m = len(a), len(b)
    length = [[0] * (m + 1) for _ in range(n + 1)]
    count = [[1] * (m + 1) for _ in range(n + 1)]
    keep = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            options = [(0, i + 1, j)] + [(1, i + 1, k + 1) for k in range(j, m) if a[i] == b[k]]
            best = max(step + length[ni][nj] for step, ni, nj in options)
            ways, kept = 0, -1
            for step, ni, nj in options:   # alignments leaving a[i] out, or pairing it with b[k]
                if step + length[ni][nj] == best:
                    ways += count[ni][nj]
                    kept = max(kept, (step and i == nj - 1) + keep[ni][nj])
            length[i][j], count[i][j], keep[i][j] = best, min(ways, 2), kept
    return length[0][0], count[0][0], keep[0][0]


def planned_alignment(case: Case, plan: Plan, name: str) -> set[tuple[int, int]]:
    """(source index, target index) of the modules of container ``name`` the plan loads."""
    src_index = {m.ident: i for i, m in enumerate(case.source_model[name])}
    tgt_index = {m.ident: j for j, m in enumerate(case.target_model[name])}
    pairs = set()
    for step in plan.steps:
        t = case.tgt_owner[step.target]
        if step.action == COPY and t.container == name and not is_bookkeeping(t.rel):
            s = case.src_owner[step.source]
            if s.container == name:    # loads from elsewhere are check_whole_modules' business
                pairs.add((src_index[s.module.ident], tgt_index[t.module.ident]))
    return pairs


def shared_containers(case: Case) -> list[str]:
    return [name for name, entry in case.source_model.items()
            if isinstance(entry, list) and isinstance(case.target_model.get(name), list)]


def aligned_plan(data: st.DataObject) -> tuple[Case, Plan]:
    """A case and its plan, for properties of the alignment itself: cases whose prefix detection went wrong
    are left to test_prefix_move_is_only_the_dataparallel_wrapper."""
    case = make_case(DrawChooser(data))
    note(case.describe())
    plan = make_plan(case.source, case.target)
    assume(plan.prefix_move == expected_move(case))
    return case, plan


@ALIGN_SETTINGS
@given(st.data())
def test_ambiguity_is_reported_exactly_where_alignments_tie(data):
    """(extra) 'Ambiguity is reported, never guessed': a container is reported ambiguous exactly when more
    than one longest alignment of its module signatures exists (the checkpoint cannot tell which is right)."""
    case, plan = aligned_plan(data)
    flagged = {a.container for a in plan.ambiguities}
    for name in shared_containers(case):
        _, ways, _ = longest_alignments([m.sig for m in case.source_model[name]],
                                        [m.sig for m in case.target_model[name]])
        if ways > 1:
            assert case.prefix + name in flagged, f"{name}: several longest alignments, no ambiguity reported"
        else:
            assert case.prefix + name not in flagged, f"{name}: one longest alignment, reported ambiguous"


@ALIGN_SETTINGS
@given(st.data())
def test_alignment_is_longest_and_ties_keep_names(data):
    """(extra) Per container the plan loads a longest alignment of signatures, and among those one that keeps
    the most modules at their index (DESIGN: 'use name agreement only to break ties'; 'take the
    name-preserving one')."""
    case, plan = aligned_plan(data)
    for name in shared_containers(case):
        longest, _, most_kept = longest_alignments([m.sig for m in case.source_model[name]],
                                                   [m.sig for m in case.target_model[name]])
        pairs = planned_alignment(case, plan, name)
        assert len(pairs) == longest, f"{name}: {sorted(pairs)} is not a longest alignment ({longest})"
        kept = sum(i == j for i, j in pairs)
        assert kept == most_kept, f"{name}: {sorted(pairs)} keeps {kept} names, a longest alignment keeps {most_kept}"


@ALIGN_SETTINGS
@given(st.data())
def test_ambiguity_rename_rule_states_the_other_reading(data):
    """(extra) DESIGN: an ambiguity comes 'with the rename rule that would state the other choice'. The rule
    must be accepted, must change which source feeds some target, and must load as much as the plan did."""
    case, plan = aligned_plan(data)
    for ambiguity in plan.ambiguities:
        if ambiguity.rename_rule is None:
            continue
        rules = re.findall(r"--rename '([^']*)'", ambiguity.rename_rule)
        assert rules, ambiguity.rename_rule
        other = make_plan(case.source, case.target, rename=rules)   # raises MappingError if the rules collide
        assert sources_of(other) != sources_of(plan), f"{ambiguity.rename_rule} changes nothing"
        assert loaded(other) == loaded(plan), f"{ambiguity.rename_rule}: {loaded(other)} loaded, not {loaded(plan)}"


# ---------------------------------------------------------------------------------------------- examples

def _scale_models(count: int) -> tuple[Model, Model, Module]:
    ch = RandomChooser(7)
    ids = itertools.count()
    source: Model = {}
    for name in CONTAINERS:
        modules: list[Module] = []
        for _ in range(count):
            modules.append(new_module(ch, ids, modules[-1] if modules else None, allowed=("conv_bn", "block")))
        source[name] = modules
    inserted = Module(next(ids), "se", (16, 2))      # hidden 2: a signature no generated module has
    target = dict(source)
    target["neck"] = source["neck"][: count // 2] + [inserted] + source["neck"][count // 2:]
    return source, target, inserted


@pytest.mark.parametrize("prefix", ["", DP])
def test_twenty_thousand_keys_with_one_insertion(prefix):
    source_model, target_model, inserted = _scale_models(970)
    source, src_owner = flatten(source_model, "", "float16")
    target, tgt_owner = flatten(target_model, prefix, "float32")
    assert 19_000 < len(source) < 22_000
    plan = make_plan(source, target)
    case = Case(source_model, target_model, prefix, source, target, src_owner, tgt_owner)
    check_steps_cover_targets(case, plan)
    check_sources_accounted(case, plan)
    for step in plan.steps:
        owner = tgt_owner[step.target]
        if owner.module is inserted:
            assert step.action == INIT
        else:
            assert step.action == COPY and src_owner[step.source].module.ident == owner.module.ident, step
    assert plan.unused == ()


_SUBPROCESS = """
import json, sys
sys.path.insert(0, {tests!r})
import test_plan_properties as t
from ckptsurgeon.match import make_plan
out = []
for seed in range(40):
    case = t.make_case(t.RandomChooser(seed))
    out.append(repr(make_plan(case.source, case.target)))
print(json.dumps(out))
"""


def test_planning_does_not_depend_on_the_hash_seed():
    """6. Deterministic across processes too (signatures are hashes; str hashing is salted per process)."""
    script = _SUBPROCESS.format(tests=str(Path(__file__).parent))
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout))
    assert results[0] == results[1]
