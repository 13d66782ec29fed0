from __future__ import annotations

from .nets import (
    PHMDIFF_PRESETS,
    ExponentialMovingAverage,
    LevelOutput,
    PHMDiffDenoiser,
    PHMDiffSynthesizer,
    ema_avg_fn,
)

__all__ = [
    "ExponentialMovingAverage",
    "LevelOutput",
    "PHMDIFF_PRESETS",
    "PHMDiffDenoiser",
    "PHMDiffSynthesizer",
    "ema_avg_fn",
]
