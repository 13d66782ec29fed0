"""Transforms: loading and saving safely, input checks, intensity mapping per modality, slice sampling.

The eligibility checks (``.eligibility``) are imported on first use (PEP 562): they need :mod:`custom.io`, whose
batch runner imports this package.
"""

from __future__ import annotations

from custom.utils.lazy import lazy_exports

from .intensity import (
    MODALITIES,
    BackgroundFromSourced,
    ModalityDenormalize,
    ModalityDenormalized,
    ModalityNormalize,
    ModalityNormalized,
    check_modality,
)
from .spatial import ForegroundSlicesd, RandForegroundSlicesd, ResampleToSpacingd, foreground_slice_fractions
from .utility import CheckImage, CheckImaged, CheckPaird, ImageCheckError, IneligibleImageError, describe_source
from .io import (
    ImageReadError,
    OutputExistsError,
    OutputWriteError,
    SafeLoadImage,
    SafeLoadImaged,
    SafeSaveImage,
    SafeSaveImaged,
)

_LAZY = {"eligibility": ("MAX_NEGATIVE_FRACTION", "CheckEligible", "CheckEligibled", "thin_axis")}

__all__ = [
    "MODALITIES",
    "BackgroundFromSourced",
    "ModalityDenormalize",
    "ModalityDenormalized",
    "ModalityNormalize",
    "ModalityNormalized",
    "check_modality",
    "ForegroundSlicesd",
    "RandForegroundSlicesd",
    "ResampleToSpacingd",
    "foreground_slice_fractions",
    "CheckImage",
    "CheckImaged",
    "CheckPaird",
    "ImageCheckError",
    "IneligibleImageError",
    "describe_source",
    "ImageReadError",
    "OutputExistsError",
    "OutputWriteError",
    "SafeLoadImage",
    "SafeLoadImaged",
    "SafeSaveImage",
    "SafeSaveImaged",
    *_LAZY["eligibility"],
]


__getattr__ = lazy_exports(__name__, _LAZY)
