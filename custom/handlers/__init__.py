from __future__ import annotations

from .distributed import GradientAllReduceHandler
from .ema import ExponentialMovingAverage, ExponentialMovingAverageHandler, ema_avg_fn
from .progress import ProgressBarHandler
from .tensorboard import SynthesisGridHandler, synthesis_grid
from .checkpoint import (
    AtomicCheckpointSaver,
    CheckedCheckpointLoader,
    CheckpointError,
    EngineCheckpointLoader,
    EngineCheckpointSaver,
    RandomStates,
    latest_checkpoint,
    load_checkpoint,
)
from .stability import NonFiniteLossError, NonFiniteLossHandler
from .errors import BriefErrorStatsHandler, bundle_error, describe_error, report_errors_briefly

__all__ = [
    "AtomicCheckpointSaver",
    "BriefErrorStatsHandler",
    "CheckedCheckpointLoader",
    "CheckpointError",
    "EngineCheckpointLoader",
    "EngineCheckpointSaver",
    "ExponentialMovingAverage",
    "ExponentialMovingAverageHandler",
    "GradientAllReduceHandler",
    "NonFiniteLossError",
    "NonFiniteLossHandler",
    "ProgressBarHandler",
    "RandomStates",
    "SynthesisGridHandler",
    "bundle_error",
    "describe_error",
    "ema_avg_fn",
    "latest_checkpoint",
    "load_checkpoint",
    "report_errors_briefly",
    "synthesis_grid",
]
