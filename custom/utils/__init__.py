"""Helpers that are neither Ignite handlers nor networks: checkpoint files and states, and one-line errors."""

from __future__ import annotations

from .checkpoint import CheckpointError, RandomStates, latest_checkpoint, load_checkpoint
from .errors import bundle_error, describe_error, report_errors_briefly

__all__ = [
    "CheckpointError",
    "RandomStates",
    "bundle_error",
    "describe_error",
    "latest_checkpoint",
    "load_checkpoint",
    "report_errors_briefly",
]
