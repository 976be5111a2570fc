"""ckptsurgeon: PyTorch checkpoint surgery and weight transfer.

Importing the package imports neither torch nor numpy (inspecting a checkpoint must stay fast): the
public names below load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:   # type checkers see the real names; at run time they load on first use
    from .apply import apply_to_model as apply_to_model, write_plan as write_plan
    from .baseline import exact_name_outcome as exact_name_outcome
    from .convert import convert_checkpoint as convert_checkpoint
    from .diff import diff_checkpoints as diff_checkpoints
    from .engine import transfer as transfer
    from .errors import (
        CheckpointFormatError as CheckpointFormatError,
        ContainerError as ContainerError,
        GateFailed as GateFailed,
        LimitError as LimitError,
        MappingError as MappingError,
        ModelBuildError as ModelBuildError,
        OptionError as OptionError,
        OutputError as OutputError,
        ProbeError as ProbeError,
        RecipeError as RecipeError,
        ShapeError as ShapeError,
        SurgeonError as SurgeonError,
    )
    from .init import INITIALIZERS as INITIALIZERS, initialize as initialize
    from .inspect import Inspection as Inspection, inspect_checkpoint as inspect_checkpoint
    from .io import (
        Checkpoint as Checkpoint,
        CheckpointInfo as CheckpointInfo,
        Limits as Limits,
        checking as checking,
        open_checkpoint as open_checkpoint,
        read_specs as read_specs,
        verify_checkpoint as verify_checkpoint,
    )
    from .io.dcp_writer import write_dcp_folder as write_dcp_folder
    from .io.sharded_writer import write_sharded_safetensors as write_sharded_safetensors
    from .io.writer import write_state_dict as write_state_dict
    from .match import make_plan as make_plan
    from .model.batchnorm import apply_batchnorm_policy as apply_batchnorm_policy
    from .model.build import build_model as build_model
    from .model.describe import describe_keys as describe_keys, describe_model as describe_model
    from .model.freeze import FreezeChange as FreezeChange, freeze as freeze, unfreeze as unfreeze
    from .model.frozen_bn import FrozenBatchNorm as FrozenBatchNorm
    from .model.groups import param_groups as param_groups
    from .model.identity import IdentityInit as IdentityInit, identity_for as identity_for, make_identity as make_identity
    from .model.inspect import inspect_model as inspect_model
    from .model.schedule import FineTune as FineTune
    from .model.probe import Probe as Probe, compare_probes as compare_probes, probe as probe
    from .model.tied import tied_groups as tied_groups
    from .model.verify import Verification as Verification, verify as verify
    from .operations import OPERATIONS as OPERATIONS
    from .options import (
        FreezeOptions as FreezeOptions,
        Gates as Gates,
        GroupRule as GroupRule,
        PlanOptions as PlanOptions,
        RecipeOrigin as RecipeOrigin,
        TransferOptions as TransferOptions,
        UnfreezeStage as UnfreezeStage,
    )
    from .pipeline import check_gates as check_gates, run_transfer as run_transfer
    from .plan import (
        Action as Action,
        Ambiguity as Ambiguity,
        Plan as Plan,
        ReasonKind as ReasonKind,
        Step as Step,
        Unused as Unused,
    )
    from .recipe import Recipe as Recipe, load_recipe as load_recipe
    from .report import (
        REPORT_SCHEMA as REPORT_SCHEMA,
        Report as Report,
        ReportCounts as ReportCounts,
        report_metadata as report_metadata,
    )
    from .resize import RESIZE_METHODS as RESIZE_METHODS, can_resize as can_resize, resize_tensor as resize_tensor
    from .specs import TensorSpec as TensorSpec, specs_of as specs_of
    from .surgery.edits import (
        cast_checkpoint as cast_checkpoint,
        drop_keys as drop_keys,
        extract_prefix as extract_prefix,
        rename_checkpoint as rename_checkpoint,
        strip_checkpoint as strip_checkpoint,
    )
    from .surgery.combine import average_checkpoints as average_checkpoints, merge_checkpoints as merge_checkpoints
    from .surgery.fuse import fuse_bn as fuse_bn
    from .surgery.run import run_surgery as run_surgery

_PUBLIC = {
    "open_checkpoint": "io", "read_specs": "io", "Checkpoint": "io", "CheckpointInfo": "io",
    "verify_checkpoint": "io", "checking": "io", "Limits": "io",
    "write_state_dict": "io.writer", "write_dcp_folder": "io.dcp_writer",
    "write_sharded_safetensors": "io.sharded_writer",
    "inspect_checkpoint": "inspect", "Inspection": "inspect",
    "diff_checkpoints": "diff", "convert_checkpoint": "convert",
    "make_plan": "match", "Plan": "plan", "Step": "plan", "Unused": "plan", "Ambiguity": "plan",
    "apply_to_model": "apply", "write_plan": "apply",
    "transfer": "engine", "check_gates": "pipeline", "run_transfer": "pipeline",
    "PlanOptions": "options", "Gates": "options", "TransferOptions": "options", "FreezeOptions": "options",
    "GroupRule": "options", "UnfreezeStage": "options", "RecipeOrigin": "options",
    "load_recipe": "recipe", "Recipe": "recipe",
    "build_model": "model.build", "inspect_model": "model.inspect", "tied_groups": "model.tied",
    "FineTune": "model.schedule", "freeze": "model.freeze", "unfreeze": "model.freeze", "FreezeChange": "model.freeze",
    "param_groups": "model.groups", "apply_batchnorm_policy": "model.batchnorm", "FrozenBatchNorm": "model.frozen_bn",
    "describe_model": "model.describe", "describe_keys": "model.describe",
    "verify": "model.verify", "Verification": "model.verify",
    "rename_checkpoint": "surgery.edits", "drop_keys": "surgery.edits", "extract_prefix": "surgery.edits",
    "cast_checkpoint": "surgery.edits", "strip_checkpoint": "surgery.edits", "run_surgery": "surgery.run",
    "fuse_bn": "surgery.fuse", "merge_checkpoints": "surgery.combine", "average_checkpoints": "surgery.combine",
    "OPERATIONS": "operations", "Action": "plan", "ReasonKind": "plan",
    "probe": "model.probe", "compare_probes": "model.probe", "Probe": "model.probe", "ProbeError": "errors",
    "make_identity": "model.identity", "identity_for": "model.identity", "IdentityInit": "model.identity",
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
