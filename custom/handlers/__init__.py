from __future__ import annotations

from .distributed import GradientAllReduceHandler
from .ema import ExponentialMovingAverageHandler
from .progress import ProgressBarHandler
from .tensorboard import SynthesisGridHandler, synthesis_grid
from .checkpoint import AtomicCheckpointSaver, CheckedCheckpointLoader, EngineCheckpointLoader, EngineCheckpointSaver
from .stability import NonFiniteLossError, NonFiniteLossHandler
from .errors import BriefErrorStatsHandler

__all__ = [
    "AtomicCheckpointSaver",
    "BriefErrorStatsHandler",
    "CheckedCheckpointLoader",
    "EngineCheckpointLoader",
    "EngineCheckpointSaver",
    "ExponentialMovingAverageHandler",
    "GradientAllReduceHandler",
    "NonFiniteLossError",
    "NonFiniteLossHandler",
    "ProgressBarHandler",
    "SynthesisGridHandler",
    "synthesis_grid",
]
