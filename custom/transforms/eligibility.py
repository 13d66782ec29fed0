"""Whether a NIfTI input is what the model takes, as :mod:`custom.io.eligibility` decides it for DICOM series: an
image that is not (a CT given as MR, a whole head) raises :class:`~custom.transforms.IneligibleImageError`, which
a batch run reports as skipped.

Imported on first use by ``custom.transforms`` (PEP 562): :mod:`custom.io` imports the engines, which import
``custom.transforms``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_numpy, convert_to_tensor

from ..io.eligibility import MAX_SKULL_FRACTION, MIN_FOV_MM, THIN_SLAB_SLICES, head_problem
from .intensity import check_modality
from .utility import IneligibleImageError, describe_source

__all__ = ["MAX_NEGATIVE_FRACTION", "thin_axis", "CheckEligible", "CheckEligibled"]

#: MR magnitude images have no negative values. Below -5 % of the 99th percentile (_UNDERSHOOT), measured: the demo
#: T1w and T2w 0 %, resampled by a cubic spline 0.002 % at most; a head CT in HU 72 % (the issue's real one; air
#: at -1000), a phase image 48 %, the demo brains z-scored inside the brain mask (22 % of the field) 9-11 %.
MAX_NEGATIVE_FRACTION = 0.05
_UNDERSHOOT = 0.05


def thin_axis(spatial_shape: Sequence[int], thin_slab_slices: int = THIN_SLAB_SLICES) -> int | None:
    """The axis across a single slice or thin slab: the shortest, when it has fewer than ``thin_slab_slices``
    voxels (:data:`~custom.io.eligibility.THIN_SLAB_SLICES`); ``None`` for a volume."""
    shape = np.asarray(spatial_shape).ravel()
    axis = int(np.argmin(shape))
    return axis if shape[axis] < thin_slab_slices else None


class CheckEligible(Transform):
    """Refuse, with :class:`~custom.transforms.IneligibleImageError` naming the file, a channel-first image the model
    is not meant for: it takes brain-only (skull-stripped) magnitude images of the source modality.

    - MR: more than ``max_negative_fraction`` of the voxels clearly negative (below -5 % of the 99th percentile):
      MR magnitude has no negative values, so this is a CT in HU, a phase image or an intensity-normalised image.
    - MR: a whole head with skull (:func:`custom.io.eligibility.head_problem`, over ``max_skull_fraction``), judged
      across the slices of the file's last voxel axis, or of the shortest one for a single slice or thin slab.
      Only images at least 100 mm wide in that plane (:data:`~custom.io.eligibility.MIN_FOV_MM`; voxel sizes from
      the affine, 1 mm without one) are judged: a smaller field of view shows a detail, never a whole head.
    - CT: not checked.

    Args:
        modality: the source modality, ``"MR"`` or ``"CT"``.
        max_negative_fraction: the largest fraction of negative voxels of an MR image; ``None``: not checked.
        max_skull_fraction: the largest skull shell fraction of an MR image; ``None``: not checked.
    """

    def __init__(
        self,
        modality: str = "MR",
        max_negative_fraction: float | None = MAX_NEGATIVE_FRACTION,
        max_skull_fraction: float | None = MAX_SKULL_FRACTION,
    ) -> None:
        self.modality = check_modality(modality)
        for name, value in (
            ("max_negative_fraction", max_negative_fraction),
            ("max_skull_fraction", max_skull_fraction),
        ):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be a fraction in [0, 1], or None to skip the check.")
        self.max_negative_fraction, self.max_skull_fraction = max_negative_fraction, max_skull_fraction

    def __call__(self, img: torch.Tensor, name: str | None = None) -> torch.Tensor:
        reason = self.modality == "MR" and (self._intensity_problem(img) or self._head_problem(img))
        if reason:
            raise IneligibleImageError(f"{name or describe_source(img)} is not eligible: {reason}.")
        return img

    def _intensity_problem(self, img: torch.Tensor) -> str | None:
        if self.max_negative_fraction is None:
            return None
        values = convert_to_tensor(img, dtype=torch.float32, track_meta=False).flatten()
        limit = -_UNDERSHOOT * max(float(percentile(values, 99)), 0.0)
        fraction = float((values < limit).float().mean())
        if fraction <= self.max_negative_fraction:
            return None
        return (
            f"{fraction:.0%} of its voxels are negative (down to {float(values.min()):g}), but MR magnitude images "
            "have no negative values: a CT in HU, a phase image or an intensity-normalised image? The model "
            "takes MR of the source contrast"
        )

    def _head_problem(self, img: torch.Tensor) -> str | None:
        if self.max_skull_fraction is None:
            return None
        shape = img.shape[1:]
        spacing = [float(s) for s in affine_to_spacing(img.affine, r=3)] if isinstance(img, MetaTensor) else [1.0] * 3
        axis = thin_axis(shape)
        axis = 2 if axis is None else axis
        if min(n * s for k, (n, s) in enumerate(zip(shape, spacing)) if k != axis) < MIN_FOV_MM:
            return None  # a detail: its border is no head's outline
        return head_problem(convert_to_numpy(img[0]), spacing, axis, self.max_skull_fraction)


class CheckEligibled(MapTransform):
    """Dictionary wrapper of :class:`CheckEligible`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckEligible(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], describe_source(d[key], key))
        return d
