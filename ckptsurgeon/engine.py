"""The library's transfer call: a checkpoint into a live model, in one line of a training script."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable

from .errors import GateFailed, MappingError
from .options import TransferOptions, layered
from .pipeline import model_target, run_transfer

if TYPE_CHECKING:
    import torch

    from .recipe import Recipe
    from .report import Report


def transfer(source: Any, model: torch.nn.Module, *, recipe: Recipe | str | os.PathLike[str] | None = None,
             options: TransferOptions | None = None, rename: Iterable[str | tuple[str, str]] = (),
             resize: Iterable[str] = (), init: Iterable[str] = (), copy: Iterable[str] = (),
             order_fallback: bool = False, disable: Iterable[str] = (), container: str | None = None,
             trust: bool = False, seed: int | None = None, dry_run: bool = False, strict: bool = False,
             allow_unused: Iterable[str] = (), allow_new: Iterable[str] = (),
             min_coverage: float | None = None) -> Report:
    """Transfer a pretrained checkpoint into ``model`` and return the :class:`~ckptsurgeon.report.Report`.

    Matches names (rules, exact, prefix moves, structural alignment), copies what fits, resizes what a
    ``resize`` rule covers, keeps or initialises the rest, and loads the result with ``strict=True``.

    Args:
        source: a checkpoint path, an open Checkpoint, or a state dict.
        model: the target ``nn.Module`` (DataParallel/compiled/meta-device models are fine).
        recipe: a recipe (:func:`~ckptsurgeon.recipe.load_recipe`, or its path) whose transfer options apply;
            the arguments below are tried before its rules and replace its single values.
        options: all options as one :class:`~ckptsurgeon.options.TransferOptions` (instead of a recipe).
        rename: ``REGEX=REPLACEMENT`` rules (or pairs) for source names. resize: ``PATTERN=METHOD``.
        init: ``PATTERN=NAME[:ARG]``. copy: ``SRC_PREFIX=DST_PREFIX`` (one source sub-tree, several targets).
        disable: matching passes to switch off (``prefix``, ``align``, ``signature``, ``move``, ``regroup``).
        dry_run: plan and report only; the model is not touched and no tensor data is read.
        strict, allow_unused, allow_new, min_coverage: gates; a failure raises GateFailed (with ``.report``).
    Returns:
        The Report; ``print(report)`` shows it, ``report.save_json(path)`` keeps it.
    """
    from .recipe import as_recipe

    loaded = as_recipe(recipe)
    if loaded is not None and options is not None:
        raise MappingError("give either recipe= or options=, not both (a recipe is a TransferOptions)")
    base = options or (loaded.transfer if loaded is not None else TransferOptions())
    combined = layered(base, rename=tuple(rename), resize=tuple(resize), init=tuple(init), copy=tuple(copy),
                       disable=tuple(disable), order_fallback=order_fallback, seed=seed, container=container,
                       trust=trust, strict=strict, allow_unused=tuple(allow_unused), allow_new=tuple(allow_new),
                       min_coverage=min_coverage)
    report = run_transfer(source, model_target(model), combined, dry_run=dry_run,
                          recipe=loaded.origin if loaded is not None else None)
    if report.gate_failures:
        raise_gate(report)
    return report


def raise_gate(report: Report) -> None:
    error = GateFailed("; ".join(report.gate_failures))
    error.report = report
    raise error
