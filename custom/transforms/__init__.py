from __future__ import annotations

from .intensity import (
    MODALITIES,
    ModalityDenormalize,
    ModalityDenormalized,
    ModalityNormalize,
    ModalityNormalized,
    check_modality,
)
from .spatial import ForegroundSlicesd, RandForegroundSlicesd, ResampleToSpacingd, foreground_slice_fractions
from .utility import CheckImage, CheckImaged, CheckPaird, ImageCheckError, describe_source
from .io import (
    ImageReadError,
    OutputExistsError,
    OutputWriteError,
    SafeLoadImage,
    SafeLoadImaged,
    SafeSaveImage,
    SafeSaveImaged,
)
