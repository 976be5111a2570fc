"""Wrapper prefixes that say nothing about the model: DataParallel/DDP's ``module.``, torch.compile's ``_orig_mod.``."""

from __future__ import annotations

from typing import Any

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(tensors: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Drop ``module.`` / ``_orig_mod.`` when every key carries them; never ``model.``."""
    stripped: list[str] = []
    changed = True
    while changed and tensors:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in tensors):
                tensors = {key[len(prefix):]: value for key, value in tensors.items()}
                stripped.append(prefix)
                changed = True
    return tensors, tuple(stripped)
