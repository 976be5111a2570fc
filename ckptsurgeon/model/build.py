"""Building a live model from ``module.path:callable`` with JSON keyword arguments."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from ..errors import ModelBuildError


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelBuildError(f"--model-kwargs is not valid JSON ({exc}); e.g. --model-kwargs '{{\"num_classes\": 20}}'") from exc
    except RecursionError:
        raise ModelBuildError("--model-kwargs nests too deep to be keyword arguments; give a flat JSON object, "
                              "e.g. '{\"num_classes\": 20}'") from None
    if not isinstance(kwargs, dict):
        raise ModelBuildError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 20}'")
    return kwargs


def load_model(spec: str, kwargs_json: str | None = None, search_path: str | None = None) -> Any:
    """``--model``, ``--model-kwargs`` and ``--model-path`` as given on the command line, to a built model."""
    return build_model(spec, parse_model_kwargs(kwargs_json), search_path=search_path)


def build_model(spec: str, kwargs: dict[str, Any] | None = None, *, search_path: str | None = None) -> Any:
    """Import ``module.path:callable`` (optionally from ``search_path``) and call it with ``kwargs``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelBuildError(f"--model {spec!r}: expected module.path:callable, e.g. mypkg.models:build_yolo")
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any import-time failure of user code is bad input here
        raise ModelBuildError(f"--model {spec!r}: cannot import {module_name} ({type(exc).__name__}: {exc}); "
                              f"add its folder with --model-path") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ModelBuildError(f"--model {spec!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    try:
        model = target(**(kwargs or {}))
    except (Exception, SystemExit) as exc:  # a builder calling sys.exit() must not end the tool silently
        raise ModelBuildError(f"--model {spec!r}: building it failed ({type(exc).__name__}: {exc}); "
                              f"check --model-kwargs") from exc
    if not hasattr(model, "state_dict"):
        raise ModelBuildError(f"--model {spec!r}: returned {type(model).__name__}, not an nn.Module")
    return model


def load_weights(model: Any, path: str, option: str = "--weights") -> Any:
    """Load a checkpoint (read safely, any supported format) into ``model`` with ``strict=True``; a mismatch
    names the file and the keys."""
    from ..io import open_checkpoint

    with open_checkpoint(path) as checkpoint:
        state = {name: checkpoint[name] for name in checkpoint}
    own = model.state_dict()
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = ([f"{len(missing)} keys missing (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []) + \
                ([f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}"]
                 if wrong else [])
        raise ModelBuildError(f"{option} {path} does not fit the model: {'; '.join(parts)}; give the weights "
                              f"this architecture was saved with (for a modified model: the transfer's OUT)")
    model.load_state_dict(state, strict=True)
    return model
