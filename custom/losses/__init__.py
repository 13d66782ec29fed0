from __future__ import annotations

from .phmdiff_loss import GaussianMMDLoss, MaskedDenoisingLoss, PHMDiffLoss

__all__ = ["GaussianMMDLoss", "MaskedDenoisingLoss", "PHMDiffLoss"]
