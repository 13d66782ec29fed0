from __future__ import annotations

from .ema import ExponentialMovingAverage, ema_avg_fn
from .phmdiff import PHMDIFF_PRESETS, LevelOutput, PHMDiffDenoiser, PHMDiffSynthesizer, phmdiff_b, phmdiff_s, phmdiff_t

__all__ = [
    "ExponentialMovingAverage",
    "LevelOutput",
    "PHMDIFF_PRESETS",
    "PHMDiffDenoiser",
    "PHMDiffSynthesizer",
    "ema_avg_fn",
    "phmdiff_b",
    "phmdiff_s",
    "phmdiff_t",
]
