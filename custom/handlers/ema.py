"""Exponential moving average of the network's weights, kept in a :class:`torch.optim.swa_utils.AveragedModel`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel

__all__ = ["ema_avg_fn", "ExponentialMovingAverage", "ExponentialMovingAverageHandler"]


def ema_avg_fn(decay: float = 0.999, warmup: float = 10.0) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """EMA update ``avg·d + new·(1-d)`` with ``d = min(decay, (1 + n) / (warmup + n))`` after ``n`` updates.

    The warm-up keeps a short run's average from being dominated by the random initial weights.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay} must be in [0, 1).")

    def update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(num_averaged)) / (warmup + float(num_averaged)))
        return averaged * d + current * (1.0 - d)

    return update


class ExponentialMovingAverage(AveragedModel):
    """An :class:`AveragedModel` that keeps an EMA of ``network``; ``.module`` is a full copy of the network.

    Args:
        network: the trained network; it is deep-copied.
        decay: the EMA decay once warmed up.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.999) -> None:
        super().__init__(network, avg_fn=ema_avg_fn(decay), use_buffers=True)


class ExponentialMovingAverageHandler:
    """Update ``ema`` from ``network`` after every training iteration.

    Args:
        ema: the averaged model.
        network: the network being trained.
    """

    def __init__(self, ema: AveragedModel, network: torch.nn.Module) -> None:
        self.ema = ema
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.ema.update_parameters(self.network)
