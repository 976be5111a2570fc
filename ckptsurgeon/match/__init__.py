"""Matching source keys to target keys: rules, exact names, prefix moves, structural alignment."""

from .planner import make_plan
from .prefix import detect_prefix_move
from .align import align_sequences
from .structure import match_structure

__all__ = ["make_plan", "detect_prefix_move", "align_sequences", "match_structure"]
