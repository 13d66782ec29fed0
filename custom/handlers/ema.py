"""Ignite handler updating an exponential moving average of the network's weights
(:class:`custom.networks.ExponentialMovingAverage`) after every training iteration."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel

__all__ = ["ExponentialMovingAverageHandler"]


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
