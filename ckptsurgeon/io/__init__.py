"""Checkpoint readers and writers by format."""

from .reader import Checkpoint, CheckpointInfo, ContainerSummary, detect_format, open_checkpoint, read_specs

__all__ = ["Checkpoint", "CheckpointInfo", "ContainerSummary", "detect_format", "open_checkpoint", "read_specs"]
