"""Every option of a migration, in one place: what a recipe's TOML becomes, what the CLI's flags fill and
what the library's keyword arguments build. Plain frozen dataclasses; nothing here reads a file or a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_SEED = 0          # the initialisers' seed when none is given

# Matching passes a recipe (or PlanOptions.disable) can switch off. Exact names, rename and copy rules,
# and the exact-name floor always apply.
STRATEGY_SWITCHES = ("prefix", "align", "signature", "move", "regroup")

BATCHNORM_POLICIES = ("eval", "frozen", "train")
DEFAULT_GROUP = "default"   # the optimizer group of parameters no GroupRule selects
FREEZE_MODES = ("requires_grad", "lr_zero")


@dataclass(frozen=True)
class PlanOptions:
    """How source names are matched to target names, and what happens to tensors that do not fit.

    Attributes:
        rename: ``REGEX=REPLACEMENT`` strings or ``(regex, replacement)`` pairs, applied in order to every
            source name (``re.sub``); a name that becomes empty is dropped.
        resize: ``PATTERN=METHOD[:ARG]``: the first rule whose pattern matches a target name resizes it.
        init: ``PATTERN=NAME[:ARG]``: how new target tensors start (default: the target's own values).
        order_fallback: pair leftover modules by registration order (signatures must agree).
        seed: seed of the initialisers (None means :data:`DEFAULT_SEED`, recorded as such).
        copy: ``SRC_PREFIX=DST_PREFIX``: feed one source sub-tree into a target sub-tree; one source prefix
            may feed several targets (two-stream models).
        disable: matching passes switched off, from :data:`STRATEGY_SWITCHES`.
    """

    rename: tuple[str | tuple[str, str], ...] = ()
    resize: tuple[str, ...] = ()
    init: tuple[str, ...] = ()
    order_fallback: bool = False
    seed: int | None = DEFAULT_SEED
    copy: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.seed is None:
            object.__setattr__(self, "seed", DEFAULT_SEED)
        unknown = [name for name in self.disable if name not in STRATEGY_SWITCHES]
        if unknown:
            from .errors import OptionError

            raise OptionError(f"cannot switch off matching pass {unknown[0]!r}; the passes that can be switched "
                              f"off are {', '.join(STRATEGY_SWITCHES)}")

    def as_dict(self) -> dict[str, Any]:
        return {"rename": [rule if isinstance(rule, str) else list(rule) for rule in self.rename],
                "resize": list(self.resize), "init": list(self.init), "order_fallback": self.order_fallback,
                "seed": self.seed, "copy": list(self.copy), "disable": list(self.disable)}


@dataclass(frozen=True)
class Gates:
    """Checks decided on the plan before any tensor is read; a failure raises GateFailed (CLI: exit 3).

    Attributes:
        strict: fail when a source tensor is unused or a target tensor is new, except those allowed.
        allow_unused, allow_new: patterns of source / target keys that ``strict`` lets pass.
        min_coverage: fail when loaded plus resized target tensors fall below this fraction.
    """

    strict: bool = False
    allow_unused: tuple[str, ...] = ()
    allow_new: tuple[str, ...] = ()
    min_coverage: float | None = None


@dataclass(frozen=True)
class TransferOptions:
    """One transfer: matching (:class:`PlanOptions`), reading the source, and gates.

    Attributes:
        plan: rename, resize, init, copy rules and matching switches.
        container: which state dict of a checkpoint holding several (``ema``, ``model``, a dotted path).
        trust: run the pickle's own code (``torch.load(weights_only=False)``); never set by a recipe.
        gates: checks on the plan before anything is written.
    """

    plan: PlanOptions = field(default_factory=PlanOptions)
    container: str | None = None
    trust: bool = False
    gates: Gates = field(default_factory=Gates)


@dataclass(frozen=True)
class GroupRule:
    """One named optimizer parameter group: parameters matching ``patterns`` (first rule wins).

    Attributes:
        lr_scale: the group's lr is the base lr times this.
        weight_decay: the group's weight decay (None: the base weight decay).
    """

    name: str
    patterns: tuple[str, ...]
    lr_scale: float = 1.0
    weight_decay: float | None = None


@dataclass(frozen=True)
class UnfreezeStage:
    """At the start of ``epoch``, parameters matching ``patterns`` become trainable and join the optimizer
    (in the group a :class:`GroupRule` gives them, or ``group`` when named)."""

    epoch: int
    patterns: tuple[str, ...]
    group: str | None = None


@dataclass(frozen=True)
class FreezeOptions:
    """Which parameters train, how frozen BatchNorm behaves, and how the optimizer groups them.

    Attributes:
        freeze: patterns of parameter or module names (globs, or ``re:REGEX``) frozen at the start.
        freeze_types: module class names (``BatchNorm2d``) whose parameters are frozen at the start.
        freeze_transferred: freeze what a transfer loaded unchanged (train only new and resized tensors).
        batchnorm: policy for BatchNorm layers whose parameters are all frozen: ``eval`` keeps them in eval
            mode through ``model.train()``, ``frozen`` swaps in a frozen BatchNorm, ``train`` leaves them.
        mode: ``requires_grad`` toggles ``requires_grad``; ``lr_zero`` (for DDP) keeps it and puts frozen
            parameters in groups whose learning rate is 0.
        unfreeze: the schedule, in epoch order.
        lr, weight_decay: the base values every group's lr and weight decay derive from; without an ``lr``
            here, pass one to ``FineTune(..., lr=)`` (groups always state their lr); weight decay defaults to 0.
        groups: named parameter groups with lr multipliers; the rest go to a ``default`` group.
        layer_decay: layer-wise lr decay (each block deeper than the head gets this factor once more).
        no_weight_decay_norm_bias: norm weights and biases get no weight decay.
    """

    freeze: tuple[str, ...] = ()
    freeze_types: tuple[str, ...] = ()
    freeze_transferred: bool = False
    batchnorm: str = "eval"
    mode: str = "requires_grad"
    unfreeze: tuple[UnfreezeStage, ...] = ()
    lr: float | None = None
    weight_decay: float | None = None
    groups: tuple[GroupRule, ...] = ()
    layer_decay: float | None = None
    no_weight_decay_norm_bias: bool = True

    def __post_init__(self) -> None:
        from .errors import OptionError

        if self.batchnorm not in BATCHNORM_POLICIES:
            raise OptionError(f"BatchNorm policy {self.batchnorm!r}: expected one of {', '.join(BATCHNORM_POLICIES)}")
        if self.mode not in FREEZE_MODES:
            raise OptionError(f"freeze mode {self.mode!r}: expected one of {', '.join(FREEZE_MODES)}")


@dataclass(frozen=True)
class RecipeOrigin:
    """The recipe file options were read from, as reports record it."""

    path: str
    sha256: str


def layered(base: TransferOptions, *, rename: tuple[str | tuple[str, str], ...] = (), resize: tuple[str, ...] = (),
            init: tuple[str, ...] = (), copy: tuple[str, ...] = (), disable: tuple[str, ...] = (),
            order_fallback: bool = False, seed: int | None = None, container: str | None = None,
            trust: bool = False, strict: bool = False, allow_unused: tuple[str, ...] = (),
            allow_new: tuple[str, ...] = (), min_coverage: float | None = None) -> TransferOptions:
    """Options given directly (CLI flags, library arguments) over ``base`` (a recipe's): their rules are tried
    first, their single values replace the base's where given (a flag that is off leaves the base's value)."""
    plan, gates = base.plan, base.gates
    return TransferOptions(
        PlanOptions(rename + plan.rename, resize + plan.resize, init + plan.init,
                    order_fallback or plan.order_fallback, plan.seed if seed is None else seed,
                    copy + plan.copy, tuple(dict.fromkeys(disable + plan.disable))),
        base.container if container is None else container,
        trust or base.trust,
        Gates(strict or gates.strict, allow_unused + gates.allow_unused, allow_new + gates.allow_new,
              gates.min_coverage if min_coverage is None else min_coverage))
