"""Intensity mapping between scanner units and the network's [-1, 1] range, per modality.

MR intensities have no absolute unit, so they are mapped by robust percentiles of each image; CT is in
Hounsfield units, so a fixed window keeps the mapping the same for every patient and invertible.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform

__all__ = [
    "MODALITIES",
    "ModalityNormalize",
    "ModalityDenormalize",
    "ModalityNormalized",
    "ModalityDenormalized",
    "check_modality",
]

MODALITIES = ("MR", "CT")
NETWORK_RANGE = (-1.0, 1.0)


def check_modality(modality: str, name: str = "modality") -> str:
    """Return ``modality`` upper-cased, or raise ValueError naming the argument ``name``."""
    if not isinstance(modality, str) or modality.upper() not in MODALITIES:
        raise ValueError(f"{name}={modality!r} is not a supported modality; choose one of {MODALITIES}.")
    return modality.upper()


class ModalityNormalize(Transform):
    """Map an image to [-1, 1]: MR by robust percentiles of the image, CT by a fixed HU window.

    Args:
        modality: ``"MR"`` or ``"CT"``.
        lower_percentile: MR intensity percentile mapped to -1.
        upper_percentile: MR intensity percentile mapped to +1.
        hu_window: CT (lower, upper) in HU mapped to (-1, +1).
        clip: clip the result to [-1, 1].

    Example::

        ModalityNormalize("CT", hu_window=(-1000, 2000))(torch.tensor([[-1000.0, 500.0, 2000.0]]))
        # tensor([[-1., 0., 1.]])
    """

    backend = ScaleIntensityRange.backend

    def __init__(
        self,
        modality: str = "MR",
        lower_percentile: float = 0.5,
        upper_percentile: float = 99.5,
        hu_window: Sequence[float] = (-1000.0, 2000.0),
        clip: bool = True,
    ) -> None:
        self.modality = check_modality(modality)
        if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
            raise ValueError(
                f"lower_percentile={lower_percentile} and upper_percentile={upper_percentile} must satisfy "
                "0 <= lower < upper <= 100."
            )
        if len(hu_window) != 2 or hu_window[0] >= hu_window[1]:
            raise ValueError(f"hu_window={tuple(hu_window)} must be (lower, upper) with lower < upper.")
        if self.modality == "MR":
            self.scaler: Transform = ScaleIntensityRangePercentiles(
                lower_percentile, upper_percentile, *NETWORK_RANGE, clip=clip
            )
        else:
            self.scaler = ScaleIntensityRange(hu_window[0], hu_window[1], *NETWORK_RANGE, clip=clip)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self.scaler(img)


class ModalityDenormalize(Transform):
    """Map network output in [-1, 1] back to output units: the HU window for CT, ``mr_range`` for MR.

    MR has no absolute unit; ``mr_range`` only fixes where written images put their grey levels.

    Args:
        modality: ``"MR"`` or ``"CT"`` (the target modality).
        hu_window: CT (lower, upper) in HU that (-1, +1) maps to; use the same as in :class:`ModalityNormalize`.
        mr_range: MR (lower, upper) output values that (-1, +1) maps to.
        clip: clip the network output to [-1, 1] first.
    """

    backend = ScaleIntensityRange.backend

    def __init__(
        self,
        modality: str = "MR",
        hu_window: Sequence[float] = (-1000.0, 2000.0),
        mr_range: Sequence[float] = (0.0, 1000.0),
        clip: bool = True,
    ) -> None:
        self.modality = check_modality(modality)
        out_range = hu_window if self.modality == "CT" else mr_range
        if len(out_range) != 2 or out_range[0] >= out_range[1]:
            name = "hu_window" if self.modality == "CT" else "mr_range"
            raise ValueError(f"{name}={tuple(out_range)} must be (lower, upper) with lower < upper.")
        self.scaler = ScaleIntensityRange(*NETWORK_RANGE, out_range[0], out_range[1], clip=clip)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self.scaler(img)


class ModalityNormalized(MapTransform):
    """Dictionary wrapper of :class:`ModalityNormalize`."""

    backend = ModalityNormalize.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = ModalityNormalize(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


class ModalityDenormalized(MapTransform):
    """Dictionary wrapper of :class:`ModalityDenormalize`."""

    backend = ModalityDenormalize.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.denormalizer = ModalityDenormalize(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.denormalizer(d[key])
        return d
