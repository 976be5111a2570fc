"""One-checkpoint edits: rename, drop, extract, cast and strip. Each builds its plan from names, shapes and
dtypes only and runs it through :func:`.run.run_surgery` (checked, atomic, streamed)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Sequence, Unpack

from ..errors import MappingError
from ..io import Checkpoint
from ..match.rules import apply_renames, compile_pattern, parse_rename
from ..plan import DROPPED, RENAME, Plan, Step, Unused
from ..specs import FLOATING, TensorSpec
from .run import OutputOptions, copy_step, dropped, run_surgery

if TYPE_CHECKING:
    from ..report import Report

Path = str | os.PathLike[str]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}


def rename_checkpoint(source: Path, out: str | None, rules: Sequence[str | tuple[str, str]] = (), *,
                      prefixes: Sequence[str] = (), dry_run: bool = False, force: bool = False,
                      container: str | None = None, trust: bool = False, **output: Unpack[OutputOptions]) -> Report:
    """Rename keys by ``REGEX=REPLACEMENT`` rules (applied in order, ``re.sub``) and torchtune-style prefix
    tables (``layers.{}.attention.=blocks.{}.attn.``); a key that becomes empty is dropped."""
    from ..recipe import prefix_rule

    table = [prefix_rule(*_pair(text, "--prefix")) for text in prefixes]
    parsed = [parse_rename(rule) for rule in (*rules, *table)]
    if not parsed:
        raise MappingError("rename: give at least one --rule 'REGEX=REPLACEMENT' or --prefix 'OLD=NEW'")

    def build(inputs: Sequence[Checkpoint]) -> Plan:
        steps: list[Step] = []
        unused: list[Unused] = []
        taken: dict[str, str] = {}
        for name, spec in inputs[0].specs.items():
            new = apply_renames(parsed, name)
            if not new:
                unused.append(dropped(spec, DROPPED, "a rule gave it an empty name"))
                continue
            if new in taken:
                raise MappingError(f"rename gives two keys the name {new!r}: {taken[new]!r} and {name!r}; make the "
                                   f"rule more specific")
            taken[new] = name
            steps.append(copy_step(new, spec, source=name, strategy=RENAME if new != name else None,
                                   reason="renamed" if new != name else "unchanged"))
        return Plan(tuple(steps), tuple(unused))
    return run_surgery("rename", [source], build, out, dry_run=dry_run, force=force,
                       container=container, trust=trust, **output)


def _pair(text: str, option: str) -> tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise MappingError(f"{option} {text!r}: expected OLD=NEW, e.g. {option} 'layers.{{}}.attention.=blocks.{{}}.attn.'")
    return old, new


def drop_keys(source: Path, out: str | None, patterns: Sequence[str], *, dry_run: bool = False,
              force: bool = False, container: str | None = None, trust: bool = False,
              **output: Unpack[OutputOptions]) -> Report:
    """Leave out the keys any pattern selects (globs, or ``re:REGEX``)."""
    if not patterns:
        raise MappingError("drop: give at least one --pattern")
    compiled = [(pattern, compile_pattern(pattern, "--pattern")) for pattern in patterns]

    def build(inputs: Sequence[Checkpoint]) -> Plan:
        steps: list[Step] = []
        unused: list[Unused] = []
        used: set[str] = set()
        for name, spec in inputs[0].specs.items():
            hit = next((pattern for pattern, matches in compiled if matches(name)), None)
            if hit is None:
                steps.append(copy_step(name, spec))
            else:
                used.add(hit)
                unused.append(dropped(spec, DROPPED, f"--pattern {hit}"))
        notes = tuple(f"--pattern {pattern!r} selects no key" for pattern, _ in compiled if pattern not in used)
        return _nonempty(Plan(tuple(steps), tuple(unused), notes=notes), "drop", "every key")
    return run_surgery("drop", [source], build, out, dry_run=dry_run, force=force,
                       container=container, trust=trust, **output)


def extract_prefix(source: Path, out: str | None, prefix: str, *, strip: bool = False, dry_run: bool = False,
                   force: bool = False, container: str | None = None, trust: bool = False,
                   **output: Unpack[OutputOptions]) -> Report:
    """Keep the sub-tree under ``prefix`` (a module path: ``backbone`` means ``backbone.``), and with ``strip``
    remove the prefix from its names (``backbone.conv.weight`` -> ``conv.weight``)."""
    module = prefix if prefix.endswith(".") else prefix + "."

    def build(inputs: Sequence[Checkpoint]) -> Plan:
        steps: list[Step] = []
        unused: list[Unused] = []
        for name, spec in inputs[0].specs.items():
            if not name.startswith(module):
                unused.append(dropped(spec, DROPPED, f"outside {module}"))
                continue
            target = name[len(module):] if strip else name
            steps.append(copy_step(target, spec, source=name, strategy=RENAME if strip else None,
                                   reason=f"{module} stripped" if strip else "unchanged"))
        return _nonempty(Plan(tuple(steps), tuple(unused)), "extract", f"no key under {module!r}")
    return run_surgery("extract", [source], build, out, dry_run=dry_run, force=force, container=container,
                       trust=trust, **output)


def cast_checkpoint(source: Path, out: str | None, dtype: str, *, dry_run: bool = False, force: bool = False,
                    container: str | None = None, trust: bool = False, **output: Unpack[OutputOptions]) -> Report:
    """Cast floating tensors to ``dtype`` (``fp16``, ``bf16``, ``fp32``, ``fp64``); integer buffers keep theirs."""
    target = _dtype(dtype)

    def build(inputs: Sequence[Checkpoint]) -> Plan:
        return Plan(tuple(_cast_steps(inputs[0].specs.values(), target)), ())
    return run_surgery("cast", [source], build, out, dry_run=dry_run, force=force,
                       container=container, trust=trust, **output)


def strip_checkpoint(source: Path, out: str | None, *, use_ema: bool = False, dtype: str | None = None,
                     dry_run: bool = False, force: bool = False, container: str | None = None,
                     trust: bool = False, **output: Unpack[OutputOptions]) -> Report:
    """Weights only: the model's state dict (or with ``use_ema`` the EMA's) without the optimizer, epoch and
    everything else the file holds; ``dtype`` casts floating tensors (a YOLOv7 ``.pt`` keeps fp16 weights).
    """
    if use_ema and container not in (None, "ema"):
        raise MappingError(f"strip: --use-ema reads the 'ema' container; --container {container!r} says otherwise")
    chosen = "ema" if use_ema else container
    target = _dtype(dtype) if dtype else None

    def build(inputs: Sequence[Checkpoint]) -> Plan:
        info = inputs[0].info
        specs = inputs[0].specs.values()
        steps = _cast_steps(specs, target) if target else [copy_step(spec.name, spec) for spec in specs]
        others = [summary.path or "<root>" for summary in info.containers if not summary.chosen]
        kept = f"kept the state dict {info.container or '<root>'!r} ({len(steps)} tensors)"
        left = (f"; left out {', '.join(repr(name) for name in others)} and every entry that is not a tensor"
                if others else "; left out every entry that is not a tensor")
        return Plan(tuple(steps), (), notes=(kept + left,))
    return run_surgery("strip", [source], build, out, dry_run=dry_run, force=force,
                       container=chosen, trust=trust, **output)


def _cast_steps(specs: Iterable[TensorSpec], dtype: str | None) -> list[Step]:
    return [copy_step(spec.name, spec, dtype=dtype if dtype and spec.dtype in FLOATING else spec.dtype,
                      reason="cast" if dtype and spec.dtype in FLOATING and spec.dtype != dtype else "unchanged")
            for spec in specs]


def _dtype(text: str) -> str:
    dtype = DTYPES.get(text, text if text in DTYPES.values() else None)
    if dtype is None:
        raise MappingError(f"--dtype {text!r}: expected one of {', '.join(DTYPES)}")
    return dtype


def _nonempty(plan: Plan, command: str, what: str) -> Plan:
    if not plan.steps:
        raise MappingError(f"{command}: {what} left out, so the output would hold no tensor; nothing written")
    return plan
