"""Say what would help: options that would load more than the plan does, each checked by planning again.

- ``--rename '^SRC\\.=TGT.'`` where a source module left unused (no match) and a target module left new
  hold the same tensor names and shapes, one of each: evidence the planner does not act on by itself (the
  signature recurs elsewhere, or they sit in different parts of the model), the user may.
- ``--order-fallback`` where several such modules are left on both sides and registration order pairs them.

A suggestion is kept only when the plan with it loads strictly more tensors; it never changes the plan.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Callable, Iterable, Mapping

from ..errors import MappingError
from ..plan import AMBIGUOUS, INIT, NO_MATCH, Plan, PlanOptions, Suggestion, is_bookkeeping
from ..specs import TensorSpec
from ..tree import parent_of

Planner = Callable[[PlanOptions], Plan]
Signature = tuple[tuple[str, tuple[int, ...]], ...]   # a module's relative tensor names and shapes


def suggest(plan: Plan, source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec],
            replan: Planner) -> tuple[Suggestion, ...]:
    s_modules = _left_modules(((u.source, source[u.source]) for u in plan.unused if u.reason in (NO_MATCH, AMBIGUOUS)),
                              source)
    unmatched = {u.source for u in plan.unused if u.reason == NO_MATCH}
    t_modules = _left_modules(((s.target, target[s.target]) for s in plan.steps if s.action == INIT), target)
    by_sig: dict[Signature, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for path, sig in s_modules.items():
        by_sig[sig][0].append(path)
    for path, sig in t_modules.items():
        if sig in by_sig:
            by_sig[sig][1].append(path)
    renames: list[str] = []
    taken: list[str] = []
    crowded = False
    for sig, (s_paths, t_paths) in sorted(by_sig.items(), key=lambda item: -len(item[0])):   # largest first
        if not t_paths or any(_below(p, taken) for p in s_paths + t_paths):
            continue
        if len(s_paths) == len(t_paths) == 1 and any(n.startswith(s_paths[0] + ".") for n in unmatched):
            renames.append(_rename_rule(s_paths[0], t_paths[0]))   # (an ambiguity brings its own rules)
            taken += [s_paths[0], t_paths[0]]
        elif len(s_paths) > 1 or len(t_paths) > 1:
            crowded = True
    out = []
    loaded = _loaded(plan)
    options = plan.options
    for rule in renames:
        more = _gain(replan, dataclasses.replace(options, rename=options.rename + (rule,)), loaded)
        if more > 0:
            out.append(Suggestion(f"--rename '{rule}'", f"an unused source module and a new target module hold "
                                  f"the same tensor names and shapes; {more} more tensors would load", more))
    if crowded and not options.order_fallback:
        more = _gain(replan, dataclasses.replace(options, order_fallback=True), loaded)
        if more > 0:
            out.append(Suggestion("--order-fallback", f"identical modules left on both sides pair in registration "
                                  f"order; {more} more tensors would load", more))
    return tuple(out)


def _left_modules(entries: Iterable[tuple[str, TensorSpec]], specs: Mapping[str, TensorSpec]
                  ) -> dict[str, Signature]:
    """Modules every tensor of which is left over, by their signature (relative names and shapes)."""
    left = {name: spec.shape for name, spec in entries if not is_bookkeeping(name)}
    total: dict[str, int] = defaultdict(int)
    for name in specs:
        if not is_bookkeeping(name):
            for path in _ancestors(name):
                total[path] += 1
    count: dict[str, int] = defaultdict(int)
    for name in left:
        for path in _ancestors(name):
            count[path] += 1
    whole = {path for path, n in count.items() if n == total[path]}
    out = {}
    for path in whole:
        out[path] = tuple(sorted((name[len(path) + 1:], shape) for name, shape in left.items()
                                 if name.startswith(path + ".")))
    return out


def _below(path: str, others: list[str]) -> bool:
    return any(path == o or path.startswith(o + ".") for o in others)


def _ancestors(name: str) -> list[str]:
    """Module paths above a key, the root ('') left out: ``a.b.w`` -> [``a.b``, ``a``]."""
    out, path = [], parent_of(name)
    while path:
        out.append(path)
        path = parent_of(path)
    return out


def _rename_rule(source: str, target: str) -> str:
    return f"^{re.escape(source)}\\.={target}."


def _gain(replan: Planner, options: PlanOptions, loaded: int) -> int:
    try:
        return _loaded(replan(options)) - loaded
    except MappingError:   # the rule collides with the user's own rules: not a suggestion to make
        return 0


def _loaded(plan: Plan) -> int:
    return sum(step.is_transferred for step in plan.steps)
