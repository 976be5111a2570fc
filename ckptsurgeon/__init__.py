"""ckptsurgeon: PyTorch checkpoint surgery and weight transfer.

Importing the package imports neither torch nor numpy (inspecting a checkpoint must stay fast): the
public names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "open_checkpoint": "io", "read_specs": "io", "Checkpoint": "io", "CheckpointInfo": "io",
    "verify_checkpoint": "io", "checking": "io", "Limits": "io",
    "write_state_dict": "io.writer",
    "inspect_checkpoint": "inspect", "inspect_model": "inspect", "Inspection": "inspect",
    "diff_checkpoints": "diff", "convert_checkpoint": "convert",
    "make_plan": "match", "Plan": "plan", "Step": "plan", "Unused": "plan", "Ambiguity": "plan",
    "apply_to_model": "apply", "write_plan": "apply",
    "transfer": "engine", "check_gates": "engine", "Gates": "engine", "TransferOptions": "engine",
    "Report": "report", "ReportCounts": "report", "REPORT_SCHEMA": "report", "report_metadata": "report",
    "exact_name_outcome": "baseline",
    "TensorSpec": "specs", "specs_of": "specs",
    "RESIZE_METHODS": "resize", "resize_tensor": "resize", "can_resize": "resize",
    "INITIALIZERS": "init", "initialize": "init",
    "SurgeonError": "errors", "CheckpointFormatError": "errors", "ContainerError": "errors",
    "MappingError": "errors", "ShapeError": "errors", "RecipeError": "errors", "ModelBuildError": "errors",
    "OutputError": "errors", "GateFailed": "errors", "LimitError": "errors", "OptionError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ckptsurgeon' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
