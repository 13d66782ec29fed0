from __future__ import annotations

from .nets import PHMDIFF_PRESETS, PHMDiffDenoiser, PHMDiffSynthesizer

__all__ = ["PHMDIFF_PRESETS", "PHMDiffDenoiser", "PHMDiffSynthesizer"]
