from __future__ import annotations

from .phmdiff import PHMDIFF_PRESETS, PHMDiffDenoiser, PHMDiffSynthesizer, phmdiff_b, phmdiff_s, phmdiff_t

__all__ = ["PHMDIFF_PRESETS", "PHMDiffDenoiser", "PHMDiffSynthesizer", "phmdiff_b", "phmdiff_s", "phmdiff_t"]
