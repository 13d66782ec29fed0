"""Exponential moving average of a network's weights, kept in a :class:`torch.optim.swa_utils.AveragedModel`; the
Ignite handler that updates it is :class:`custom.handlers.ExponentialMovingAverageHandler`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.swa_utils import AveragedModel

__all__ = ["ema_avg_fn", "ExponentialMovingAverage"]


def ema_avg_fn(
    decay: float = 0.999, warmup: float = 10.0
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
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
