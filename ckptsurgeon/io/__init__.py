"""Checkpoint readers and writers by format."""

from .limits import Limits
from .records import checking
from .reader import (Checkpoint, CheckpointInfo, ContainerSummary, detect_format, open_checkpoint, read_specs,
                     verify_checkpoint)

__all__ = ["Checkpoint", "CheckpointInfo", "ContainerSummary", "Limits", "checking", "detect_format",
           "open_checkpoint", "read_specs", "verify_checkpoint"]
