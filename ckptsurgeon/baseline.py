"""What the usual exact-name loop would do with the same pair, judged against a plan.

The loop every training script pastes: keep a source tensor when a target key has its name and shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .plan import Plan, is_bookkeeping
from .specs import TensorSpec


@dataclass(frozen=True)
class ExactNameOutcome:
    loaded: tuple[str, ...]        # target keys the loop fills
    wrong_layer: tuple[str, ...]   # ... of which the plan says the weights belong to another layer (or to none)
    missed: tuple[str, ...]        # target keys the plan loads and the loop leaves at their initial values

    @property
    def correct(self) -> int:
        return len(self.loaded) - len(self.wrong_layer)


def exact_name_outcome(plan: Plan, source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec]) -> ExactNameOutcome:
    """Judge the exact-name-and-shape loop by the plan (bookkeeping counters left out)."""
    counted = [name for name in target if not is_bookkeeping(name)]
    loaded = tuple(name for name in counted if name in source and source[name].shape == target[name].shape)
    steps = {step.target: step for step in plan.steps}
    wrong = tuple(name for name in loaded if steps[name].source != name or not steps[name].is_transferred)
    loaded_set = set(loaded)
    missed = tuple(name for name in counted if steps[name].is_transferred and name not in loaded_set)
    return ExactNameOutcome(loaded, wrong, missed)
