"""The opt-in order-based fallback: models renamed throughout but registered in the same order.

Unlike zipping two key lists, it pairs whole leaf modules whose signatures agree, in order (a longest
common subsequence), so BatchNorm weight/bias/mean/var are never paired with each other.
"""

from __future__ import annotations

from typing import Mapping

from ..plan import ORDER, is_bookkeeping
from ..specs import TensorSpec
from ..tree import leaf_of, parent_of
from .align import align_sequences


def _leaf_modules(specs: Mapping[str, TensorSpec], taken: set[str]) -> list[tuple[str, dict[str, TensorSpec]]]:
    modules: dict[str, dict[str, TensorSpec]] = {}
    for name, spec in specs.items():
        modules.setdefault(parent_of(name), {})[leaf_of(name)] = spec
    return [(path, tensors) for path, tensors in modules.items()
            if not any(_join(path, leaf) in taken for leaf in tensors)]


def _join(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf


def _signature(tensors: dict[str, TensorSpec]) -> int:
    return hash(tuple(sorted((leaf, spec.shape) for leaf, spec in tensors.items() if not is_bookkeeping(leaf))))


def match_by_order(source: Mapping[str, TensorSpec], target: Mapping[str, TensorSpec],
                   pairs: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Pairs for target keys left unpaired, from source modules left unused, module by module in order."""
    used_sources = {s for s, _ in pairs.values()}
    s_modules = _leaf_modules(source, used_sources)
    t_modules = _leaf_modules(target, set(pairs))
    matched = align_sequences([_signature(t) for _, t in s_modules], [_signature(t) for _, t in t_modules])
    out: dict[str, tuple[str, str]] = {}
    for i, j in matched:
        s_path, s_tensors = s_modules[i]
        t_path, t_tensors = t_modules[j]
        for leaf in t_tensors:
            if leaf in s_tensors:
                out[_join(t_path, leaf)] = (_join(s_path, leaf), ORDER)
    return out
