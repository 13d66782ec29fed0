"""Stop training at the first non-finite loss, naming where it happened."""

from __future__ import annotations

import math

from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

__all__ = ["NonFiniteLossError", "NonFiniteLossHandler"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteLossHandler:
    """Raise :class:`NonFiniteLossError` when the loss is not finite, before ``backward`` can spoil the weights.

    The last checkpoint written stays the last good one. The message names the epoch, iteration and the files
    of the batch (from the batch's ``filename`` entries, which the bundle's slice sampler adds).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = float(engine.state.output[CommonKeys.LOSS].detach())
        if math.isfinite(loss):
            return
        batch = engine.state.batch
        files = batch.get("filename", []) if isinstance(batch, dict) else []
        files = sorted(set(files)) if isinstance(files, (list, tuple)) else [str(files)]
        raise NonFiniteLossError(
            f"training loss is {loss} at epoch {engine.state.epoch}, iteration {engine.state.iteration}; "
            f"batch files: {files or 'unknown'}. Training stopped; the last checkpoint written is intact."
        )
