"""The plan: what happens to every target key and why, computed from names, shapes and dtypes only.

Invariant (property-tested): every target key has exactly one :class:`Step`; every source key is used by
one or more steps (tied weights) or listed exactly once in :attr:`Plan.unused`. (A surgery command may also
list a key it reads but does not write: ``fuse-bn``'s BatchNorm keys, folded into their convolutions.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterator, NamedTuple

# re-exported: a plan records its options, and its readers use the seed default
from .options import DEFAULT_SEED as DEFAULT_SEED, PlanOptions as PlanOptions

class Action(StrEnum):
    """What a step does to produce its target tensor."""

    COPY = "copy"          # the source tensor as is (cast to the target dtype if they differ)
    RESIZE = "resize"      # a source tensor of another shape, through a named resize method
    INIT = "init"          # new: the target's own initial values, or a named initialiser
    COMPUTE = "compute"    # computed from several sources by a named operation (ckptsurgeon.operations)


COPY, RESIZE, INIT, COMPUTE = Action.COPY, Action.RESIZE, Action.INIT, Action.COMPUTE


class ReasonKind(StrEnum):
    """Why a step does what it does, for renderers that group steps without parsing the prose ``reason``."""

    MATCHED = "matched"                # copy / resize: ``strategy`` says by what evidence
    NO_SOURCE = "no source"            # new: nothing in the source matches
    SHAPE_MISMATCH = "shape mismatch"  # new: a source matches but its shape differs and no resize applies
    COUNTER = "counter"                # a bookkeeping counter that starts afresh
    OPERATION = "operation"            # computed by an operation, or copied by a surgery command

# Strategies: which kind of evidence paired a source key with a target key
EXACT = "exact"            # same name, structure around it agrees
RENAME = "rename"          # a --rename rule gave the name
PREFIX = "prefix"          # a consistent prefix move (added, removed or replaced)
ALIGN = "align"            # structural alignment inside a numbered container (indices shifted)
SIGNATURE = "signature"    # renamed sibling modules paired by their unique signature / name similarity
ORDER = "order"            # the opt-in order-based fallback
MOVE = "move"              # a sub-tree found elsewhere in the model (a backbone under a new wrapper)
REGROUP = "regroup"        # leaf modules regrouped under new parents inside two paired modules
TIED = "tied"              # a target key tied to another target key that got this source
COPY_RULE = "copy-rule"    # a --copy rule: one source sub-tree feeding one or several target sub-trees

# Reasons a source key is unused
NO_MATCH = "no match"
SHAPE_MISMATCH = "shape mismatch"
AMBIGUOUS = "ambiguous"
DROPPED = "dropped by rule"

KEEP_TARGET = "target"    # init method: keep whatever the target's constructor produced


class Step(NamedTuple):
    """What one target key receives. (A NamedTuple: plans of 100k keys are built in well under a second.)"""

    target: str
    action: str
    target_shape: tuple[int, ...]
    target_dtype: str
    source: str | None = None
    source_shape: tuple[int, ...] | None = None
    source_dtype: str | None = None
    strategy: str | None = None
    method: str | None = None      # resize method ("slice_pad", "yolo_head:3") or init ("target", "normal:0.01")
    reason: str = ""
    fill: str | None = None        # resize steps: how the part the source does not cover starts (an init)
    operands: tuple[tuple[int, str], ...] = ()   # (input, key) of every source when not just ``source`` of input 0
    reason_kind: str = ""          # a ReasonKind

    @property
    def sources(self) -> tuple[tuple[int, str], ...]:
        """(input index, key) of every tensor this step reads: ``operands``, or ``source`` of input 0."""
        if self.operands:
            return self.operands
        return ((0, self.source),) if self.source is not None else ()

    @property
    def is_transferred(self) -> bool:
        return self.action in (COPY, RESIZE, COMPUTE)

    @property
    def is_cast(self) -> bool:
        return self.source_dtype is not None and self.source_dtype != self.target_dtype


class Unused(NamedTuple):
    """A source key no target key uses, and why (``place``: for a shape mismatch, the target key it was
    paired with)."""

    source: str
    shape: tuple[int, ...]
    dtype: str
    reason: str
    detail: str = ""
    place: str | None = None


class ModuleStart(NamedTuple):
    """What applying an ``identity`` rule did to one module: the structure found (``residual``, ``gate``,
    ``dirac``, ``none``), whether it starts as the identity, why (or why not), and the relative error its
    start leaves (0 for exact kinds, ``1 - sigmoid(bias)`` for an open gate, None when not ``ok``)."""

    module: str
    kind: str
    ok: bool
    reason: str
    expected_error: float | None = None


@dataclass(frozen=True)
class Ambiguity:
    """A place where the checkpoint cannot tell which reading is right; the plan took ``chosen``."""

    container: str
    chosen: str
    alternative: str
    rename_rule: str | None = None   # the --rename options that state the alternative reading
    renames: tuple[tuple[str, str | None], ...] = ()   # (source module, target module or None: unused)
    loads_nothing: bool = False   # identical modules nothing tells apart: the plan loaded none of them


class Suggestion(NamedTuple):
    """An option that would load more (checked by planning with it); the plan itself does not take it."""

    option: str
    reason: str
    loads_more: int


@dataclass(frozen=True)
class Plan:
    """What happens to every target key (``steps``, in target order) and to every source key no step uses
    (``unused``), with the places the checkpoint could not decide (``ambiguities``), the prefix move applied,
    the options planned with, notes, and options that would load more (``suggestions``). Pure data: computed
    from names, shapes and dtypes, rendered by the Report, run by :func:`~ckptsurgeon.apply.apply_to_model`."""

    steps: tuple[Step, ...]
    unused: tuple[Unused, ...]
    ambiguities: tuple[Ambiguity, ...] = ()
    prefix_move: tuple[str, str] | None = None    # (removed, added) when a prefix move was applied
    options: PlanOptions = field(default_factory=PlanOptions)
    notes: tuple[str, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def step_for(self, target: str) -> Step:
        for step in self.steps:
            if step.target == target:
                return step
        raise KeyError(target)

    @property
    def transferred(self) -> tuple[Step, ...]:
        return tuple(step for step in self.steps if step.is_transferred)

    def sources_needed(self) -> list[str]:
        """Source keys (of input 0) the apply step must read, each once, in target order."""
        return list(dict.fromkeys(key for step in self.steps if step.is_transferred
                                  for index, key in step.sources if index == 0))


def is_bookkeeping(name: str) -> bool:
    """Counters such as BatchNorm's ``num_batches_tracked``: carried along, never counted as a failure."""
    return name.rpartition(".")[2] == "num_batches_tracked"
