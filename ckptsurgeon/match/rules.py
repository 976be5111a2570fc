"""User rules, one vocabulary for CLI, library and recipes.

- rename ``REGEX=REPLACEMENT``: applied in order to every source name (``re.sub``); a name that becomes
  empty is dropped.
- resize ``PATTERN=METHOD[:ARG]`` and init ``PATTERN=NAME[:ARG]``: the first rule whose pattern matches a
  target name applies. Patterns are globs (``yolo_head_P*.weight``) or, prefixed with ``re:``, regular
  expressions searched in the name.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Iterable

from ..errors import MappingError


@dataclass(frozen=True)
class RenameRule:
    text: str
    pattern: re.Pattern[str]
    replacement: str

    def apply(self, name: str) -> str:
        try:
            return self.pattern.sub(self.replacement, name)
        except (re.error, IndexError) as exc:
            raise MappingError(f"--rename {self.text!r}: bad replacement ({exc})") from exc


@dataclass(frozen=True)
class PatternRule:
    """``PATTERN=VALUE`` for resize and init rules."""

    text: str
    matches: Callable[[str], bool]
    value: str


def _split(text: str, option: str, example: str) -> tuple[str, str]:
    if "=" not in text:
        raise MappingError(f"{option} {text!r}: expected LEFT=RIGHT, e.g. {option} '{example}'")
    for index, char in enumerate(text):
        if char != "=":
            continue
        left, right = text[:index], text[index + 1:]
        try:
            re.compile(left)
        except re.error:
            continue
        return left, right
    left, _, right = text.partition("=")
    return left, right


def parse_rename(text: str | tuple[str, str]) -> RenameRule:
    """``REGEX=REPLACEMENT`` (the CLI's form) or a ``(regex, replacement)`` pair (a recipe's)."""
    if isinstance(text, tuple):
        left, right = text
        text = f"{left}={right}"
    else:
        left, right = _split(text, "--rename", r"^backbone\.=model.backbone.")
    if not left:
        raise MappingError(f"--rename {text!r}: the pattern before '=' is empty")
    try:
        pattern = re.compile(left)
    except re.error as exc:
        raise MappingError(f"--rename {text!r}: invalid regular expression {left!r} ({exc})") from exc
    rule = RenameRule(text, pattern, right)
    rule.apply("probe.name")  # surfaces bad group references now, not mid-plan
    return rule


def compile_pattern(pattern: str, option: str) -> Callable[[str], bool]:
    """A glob, or ``re:REGEX`` searched in the name."""
    if pattern.startswith("re:"):
        try:
            compiled = re.compile(pattern[3:])
        except re.error as exc:
            raise MappingError(f"{option} {pattern!r}: invalid regular expression ({exc})") from exc
        return lambda name: compiled.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def parse_pattern_rule(text: str, option: str, validate: Callable[[str], object], example: str) -> PatternRule:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern or not value:
        raise MappingError(f"{option} {text!r}: expected PATTERN=VALUE, e.g. {option} '{example}'")
    validate(value)
    return PatternRule(text, compile_pattern(pattern, option), value)


def parse_resize_rules(texts: Iterable[str]) -> list[PatternRule]:
    from ..resize import parse_method

    return [parse_pattern_rule(t, "--resize", parse_method, "yolo_head_P*=yolo_head") for t in texts]


def parse_init_rules(texts: Iterable[str]) -> list[PatternRule]:
    from ..init import parse_init

    return [parse_pattern_rule(t, "--init", parse_init, "*.fc.weight=normal:0.01") for t in texts]


def first_match(rules: list[PatternRule], name: str) -> PatternRule | None:
    for rule in rules:
        if rule.matches(name):
            return rule
    return None


def apply_renames(rules: list[RenameRule], name: str) -> str:
    for rule in rules:
        name = rule.apply(name)
    return name


@dataclass(frozen=True)
class CopyRule:
    """``SRC_PREFIX=DST_PREFIX``: every source key under SRC_PREFIX also feeds the target key under DST_PREFIX."""

    text: str
    source_prefix: str
    target_prefix: str

    def target_for(self, name: str) -> str | None:
        if not name.startswith(self.source_prefix):
            return None
        return self.target_prefix + name[len(self.source_prefix):]


def parse_copy(text: str) -> CopyRule:
    source_prefix, sep, target_prefix = text.partition("=")
    if not sep or not source_prefix or not target_prefix:
        raise MappingError(f"--copy {text!r}: expected SRC_PREFIX=DST_PREFIX, e.g. --copy 'backbone.=rgb.backbone.'")
    if source_prefix.endswith(".") != target_prefix.endswith("."):
        raise MappingError(f"--copy {text!r}: end both prefixes with '.' (module prefixes) or neither, so that "
                           f"names stay well formed")
    return CopyRule(text, source_prefix, target_prefix)
