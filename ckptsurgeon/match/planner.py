"""make_plan: from source and target specs (and the user's rules) to a Plan. Pure; reads no tensor data."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Mapping

from ..errors import MappingError
from ..plan import (ALIGN, AMBIGUOUS, COPY, COPY_RULE, DROPPED, EXACT, INIT, KEEP_TARGET, MOVE, NO_MATCH, ORDER, PREFIX,
                    REGROUP, RENAME, RESIZE, SHAPE_MISMATCH, SIGNATURE, TIED, Ambiguity, Plan, PlanOptions, ReasonKind, Step,
                    Unused, is_bookkeeping)
from ..runtime import paused_gc
from ..specs import TensorSpec, format_shape
from ..tree import parent_of
from .order import match_by_order
from .prefix import detect_prefix_move, moved_name
from .provenance import (Provenance, apply_move, copy_sources, original_name, provenance_pair, rename_sources,
                         with_rename_rule)
from .rules import PatternRule, first_match, parse_init_rules, parse_resize_rules
from .structure import StructureMatch, match_structure
from .suggest import suggest


def make_plan(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], *,
              rename: Iterable[str | tuple[str, str]] = (), resize: Iterable[str] = (), init: Iterable[str] = (),
              order_fallback: bool = False, tied: Iterable[Iterable[str]] = (), seed: int | None = None,
              copy: Iterable[str] = (), disable: Iterable[str] = ()) -> Plan:
    """Plan the transfer of ``source`` tensors into ``target`` keys.

    Args:
        source, target: name -> TensorSpec, in file / registration order.
        rename: ``REGEX=REPLACEMENT`` rules applied to source names first (an empty result drops the key).
        resize: ``PATTERN=METHOD[:ARG]``: how target keys whose paired source differs in shape are resized.
        init: ``PATTERN=NAME[:ARG]``: how new target tensors are initialised (default: the target's own values).
        order_fallback: pair leftover modules by registration order (signatures must still agree).
        tied: groups of target keys that share one tensor (a source for one feeds them all).
        seed: recorded in the plan for the initialisers.
        copy: ``SRC_PREFIX=DST_PREFIX``: a source sub-tree into a target sub-tree (several targets allowed).
        disable: matching passes switched off (``prefix``, ``align``, ``signature``, ``move``, ``regroup``).
    """
    options = PlanOptions(tuple(rename), tuple(resize), tuple(init), order_fallback, seed, tuple(copy),
                          tuple(disable))
    return plan_with_options(source, target, options, tied)


def plan_with_options(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], options: PlanOptions,
                      tied: Iterable[Iterable[str]] = ()) -> Plan:
    """:func:`make_plan` with its options already gathered (the transfer engine and recipes pass them whole)."""
    tied = [list(group) for group in tied]
    _check_depth(source, "source")
    _check_depth(target, "target")
    with paused_gc():
        plan = _make_plan(source, target, options, tied)
        if plan.unused and any(step.action == INIT for step in plan.steps):
            found = suggest(plan, source, target, lambda other: _make_plan(source, target, other, tied))
            plan = dataclasses.replace(plan, suggestions=found)
    return plan


MAX_DEPTH = 200   # module levels in a key name; real models have a few dozen at most


def _check_depth(specs: Mapping[str, TensorSpec], side: str) -> None:
    if max(map(str.count, specs, itertools.repeat(".")), default=0) <= MAX_DEPTH:
        return
    deepest = max(specs, key=lambda name: name.count("."))
    raise MappingError(f"{side} key {deepest[:80]!r}... is {deepest.count('.')} modules deep; planning follows "
                       f"at most {MAX_DEPTH} levels (a name like that is damaged or hostile, not a model)")


def _make_plan(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], options: PlanOptions,
               tied: Iterable[Iterable[str]]) -> Plan:
    resize_rules, init_rules = parse_resize_rules(options.resize), parse_init_rules(options.init)
    pinned, rest, provenance, dropped = rename_sources(source, target, options.rename)
    copied = copy_sources(source, target, options.copy)
    if copied:
        pinned, rest = _with_copies(pinned, rest, provenance, copied)
    free_targets = {name: spec for name, spec in target.items() if name not in pinned}
    disabled = frozenset(options.disable)
    # the whole target: pinned keys still show where modules live
    move = None if "prefix" in disabled else detect_prefix_move(rest, target)
    if move is not None:
        rest, provenance, move = apply_move(rest, provenance, move)
    wrapper = move[1].rstrip(".") if move is not None and not move[0] else ""
    found = _match_around_pinned(source, target, rest, pinned, move, wrapper, disabled)
    if options.order_fallback:
        found.pairs.update(match_by_order(rest, free_targets, found.pairs))
    found.pairs.update(_exact_name_floor(rest, free_targets, found))
    pairs = ({t: provenance_pair(s, how, provenance) for t, (s, how) in found.pairs.items()} if provenance
             else found.pairs)   # no rule and no move: matching saw the checkpoint's own names
    pairs.update({t: (original, COPY_RULE if t in copied else RENAME) for t, original in pinned.items()})
    _spread_ties(pairs, tied)
    steps = tuple(_step(spec, pairs.get(name), source, resize_rules, init_rules) for name, spec in target.items())
    if found.counters_to_check:
        steps = _counters_follow_statistics(steps, found.counters_to_check, target)
    ambiguous = {original_name(n, provenance) for n in found.ambiguous_sources}
    paired = {pairs[step.target][0]: step for step in steps if step.target in pairs}
    unused = _unused(source, steps, dropped, ambiguous, paired)
    ambiguities = tuple(with_rename_rule(a, rest, provenance) for a in found.ambiguities)
    return Plan(steps, unused, ambiguities, move, options)


def _with_copies(pinned: dict[str, str], rest: dict[str, TensorSpec], provenance: dict[str, Provenance],
                 copied: dict[str, str]) -> tuple[dict[str, str], dict[str, TensorSpec]]:
    """Copied targets are pinned; the source keys a copy rule feeds go nowhere else by matching (a --copy rule
    states every place its sub-tree goes, with --rename for one more)."""
    clash = next((t for t in copied if t in pinned), None)
    if clash is not None:
        raise MappingError(f"{clash!r} is fed by a --rename rule ({pinned[clash]!r}) and a --copy rule "
                           f"({copied[clash]!r}); keep one")
    feeding = set(copied.values())
    rest = {name: spec for name, spec in rest.items() if original_name(name, provenance) not in feeding}
    return {**pinned, **copied}, rest


def _counters_follow_statistics(steps: tuple[Step, ...], modules: list[tuple[list[str], list[str]]],
                                target: Mapping[str, TensorSpec]) -> tuple[Step, ...]:
    """A BatchNorm's ``num_batches_tracked`` counts the statistics it came with: where none of its module's
    tensors loads (channels all changed, no --resize), it starts afresh with them."""
    position = {name: i for i, name in enumerate(target)}
    out = list(steps)
    for counters, others in modules:
        if not any(out[position[key]].is_transferred for key in others):
            for key in counters:
                step = out[position[key]]
                out[position[key]] = Step(key, INIT, step.target_shape, step.target_dtype, method=KEEP_TARGET,
                                          reason="bookkeeping counter, starts afresh with its module's "
                                                 "statistics (none of them loads)", reason_kind=ReasonKind.COUNTER)
    return tuple(out)


def _match_around_pinned(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec],
                         rest: Mapping[str, TensorSpec], pinned: Mapping[str, str], move: tuple[str, str] | None,
                         wrapper: str, disabled: frozenset[str] = frozenset()) -> StructureMatch:
    """Structural matching of what the rules left, on trees that still hold the pinned keys (as ghosts under
    their own names, and their targets): a rule inside a module must not change how its parents align."""
    if not pinned:
        return match_structure(rest.values(), target.values(), EXACT, wrapper, disabled)
    ghosts = {}
    for original in pinned.values():
        name = moved_name(original, move) if move else original
        if name not in rest:
            ghosts[name] = source[original].with_name(name)
    found = match_structure([*rest.values(), *ghosts.values()], target.values(), EXACT, wrapper, disabled)
    found.pairs = {t: (s, how) for t, (s, how) in found.pairs.items() if t not in pinned and s not in ghosts}
    found.ambiguous_sources -= ghosts.keys()

    def settled(ambiguity: Ambiguity) -> bool:   # the rules already state a reading there
        return any(_holds(s, ghosts) or (t is not None and _holds(t, pinned)) for s, t in ambiguity.renames)
    found.ambiguities = [a for a in found.ambiguities if not settled(a)]
    return found


def _holds(module: str, keys: Iterable[str]) -> bool:
    return any(key.startswith(module + ".") for key in keys)


def _exact_name_floor(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec], found: StructureMatch
                      ) -> dict[str, tuple[str, str]]:
    """Never load less than the exact-name loop: a target tensor left unpaired whose name and shape the
    source has loads from it, unless the plan says that name now belongs elsewhere (its module loads from
    another module, or that source module feeds another one) or is ambiguous."""
    used = {s for s, _ in found.pairs.values()} | found.ambiguous_sources
    if len(used) == len(source) or len(found.pairs) == len(target):
        return {}
    loads_from: dict[str, str] = {}
    for t, (s, _) in found.pairs.items():
        loads_from[parent_of(t)] = parent_of(s)
    feeding = set(loads_from.values())
    extra = {}
    for name, spec in target.items():
        other = source.get(name)
        if name in found.pairs or other is None or other.shape != spec.shape or name in used or is_bookkeeping(name):
            continue   # (a counter goes with its module's statistics, never alone)
        module = parent_of(name)
        if loads_from.get(module, module) == module and (module not in feeding or loads_from.get(module) == module):
            extra[name] = (name, EXACT)
    return extra


def _spread_ties(pairs: dict[str, tuple[str, str]], tied: Iterable[Iterable[str]]) -> None:
    for group in tied:
        members = list(group)
        fed = next((pairs[m] for m in members if m in pairs), None)
        if fed is not None:
            for member in members:
                pairs.setdefault(member, (fed[0], TIED))


def _init_for(spec: TensorSpec, rules: list[PatternRule]) -> tuple[str, str]:
    """The first --init rule that can fill this tensor, or the target's own values; and a note why."""
    from ..init import IDENTITY, check_init

    skipped = []
    chosen = KEEP_TARGET
    for rule in rules:
        if rule.value == IDENTITY:
            module = _outermost_module(rule, spec.name)
            if module is not None:
                chosen = f"{IDENTITY}:{module}"
                break
        elif rule.matches(spec.name):
            problem = check_init(rule.value, spec.shape, dtype=spec.dtype)
            if problem is None:
                chosen = rule.value
                break
            skipped.append(f"--init '{rule.text}' skipped: {problem}")
    return chosen, "".join(f"; {note}" for note in skipped)


def _outermost_module(rule: PatternRule, name: str) -> str | None:
    """The outermost module around ``name`` that an identity rule's pattern names (``feat*_att`` for
    ``feat1_att.fc.2.weight``), or None."""
    parts = name.split(".")[:-1]
    return next((module for end in range(1, len(parts) + 1) if rule.matches(module := ".".join(parts[:end]))), None)


def _step(spec: TensorSpec, pair: tuple[str, str] | None, source_specs: Mapping[str, TensorSpec],
          resize_rules: list[PatternRule], init_rules: list[PatternRule]) -> Step:
    name = spec.name
    if pair is None:
        fill, note = _init_for(spec, init_rules)
        counter = is_bookkeeping(name)
        why = "bookkeeping counter, starts fresh" if counter else "no source tensor matches"
        return Step(name, INIT, spec.shape, spec.dtype, method=fill, reason=why + note,
                    reason_kind=ReasonKind.COUNTER if counter else ReasonKind.NO_SOURCE)
    original, strategy = pair
    source = source_specs[original]
    if source.shape == spec.shape:  # the common case first: plans of 100k keys stay well under a second
        return Step(name, COPY, spec.shape, spec.dtype, original, source.shape, source.dtype, strategy, None,
                    _copy_reason(strategy), reason_kind=ReasonKind.MATCHED)
    fill, note = _init_for(spec, init_rules)
    mismatch = f"source {original} is {format_shape(source.shape)}, target is {format_shape(spec.shape)}"
    from ..resize import can_resize, suggest_resize

    rule = first_match(resize_rules, name)
    if rule is None:
        method = suggest_resize(source.shape, spec.shape)
        hint = f"to use it add --resize '{name}={method}'" if method else "no resize method maps these shapes"
        return Step(name, INIT, spec.shape, spec.dtype, method=fill, reason=f"shape mismatch: {mismatch}; {hint}" + note,
                    reason_kind=ReasonKind.SHAPE_MISMATCH)

    problem = can_resize(rule.value, source.shape, spec.shape)
    if problem:
        return Step(name, INIT, spec.shape, spec.dtype, method=fill,
                    reason=f"shape mismatch: {mismatch}; --resize '{rule.text}' cannot apply: {problem}" + note,
                    reason_kind=ReasonKind.SHAPE_MISMATCH)
    return Step(name, RESIZE, spec.shape, spec.dtype, original, source.shape, source.dtype, strategy, rule.value,
                f"{rule.value}: {format_shape(source.shape)} -> {format_shape(spec.shape)}" + note, fill,
                reason_kind=ReasonKind.MATCHED)


# The step names its source; the reason says what kind of evidence paired them.
_COPY_REASONS = {EXACT: "same name and shape", RENAME: "renamed by a --rename rule",
                 PREFIX: "the same name after a prefix move", ALIGN: "structural alignment: indices shifted",
                 SIGNATURE: "a sibling saved under another name, paired by its signature",
                 MOVE: "a sub-tree found under another parent, its signature unique in both models",
                 REGROUP: "a leaf module regrouped under another parent inside a matched module",
                 ORDER: "registration order (--order-fallback), signatures agree",
                 TIED: "tied to a target key loaded from the same source",
                 COPY_RULE: "fed by a --copy rule (one source sub-tree may feed several targets)"}


def _copy_reason(strategy: str) -> str:
    return _COPY_REASONS.get(strategy, strategy)


def _unused(source: Mapping[str, TensorSpec], steps: tuple[Step, ...], dropped: set[str], ambiguous: set[str],
            paired: dict[str, Step]) -> tuple[Unused, ...]:
    """Every source key no step uses, once, with the reason."""
    used = {step.source for step in steps if step.is_transferred}
    out = []
    for name, spec in source.items():
        if name in used:
            continue
        if name in dropped:
            reason, detail = DROPPED, "a --rename rule gave it an empty name"
        elif name in paired:
            target = paired[name]
            reason, detail = SHAPE_MISMATCH, (f"its place is {target.target} {format_shape(target.target_shape)}, "
                                              f"this is {format_shape(spec.shape)}")
        elif name in ambiguous:
            reason, detail = AMBIGUOUS, "identical modules: the checkpoint cannot tell which target it belongs to"
        else:
            reason, detail = NO_MATCH, ""
        out.append(Unused(name, spec.shape, spec.dtype, reason, detail,
                          paired[name].target if reason == SHAPE_MISMATCH else None))
    return tuple(out)
