"""Intensity mapping between scanner units and the network's [-1, 1] range, per modality.

MR intensities have no absolute unit, so they are mapped by robust percentiles of each image; CT is in
Hounsfield units, so a fixed window keeps the mapping the same for every patient and invertible.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, Transform
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_tensor

from .utility import ImageCheckError, describe_source

__all__ = [
    "MODALITIES",
    "ModalityNormalize",
    "ModalityDenormalize",
    "ModalityNormalized",
    "ModalityDenormalized",
    "check_modality",
    "BackgroundFromSourced",
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

    An MR image whose two percentiles are equal (e.g. a volume almost all zero) cannot be mapped: it raises
    :class:`~custom.transforms.ImageCheckError` naming the file, instead of MONAI's warning and an unscaled image.

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
        self.percentiles, self.clip = (lower_percentile, upper_percentile), clip
        self.hu_scaler = ScaleIntensityRange(hu_window[0], hu_window[1], *NETWORK_RANGE, clip=clip)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        if self.modality == "CT":
            return self.hu_scaler(img)
        values = convert_to_tensor(img, track_meta=False)
        low, high = (float(percentile(values, q)) for q in self.percentiles)
        if high - low <= 1e-6 * max(1.0, abs(low), abs(high)):  # equal up to float32 rounding
            raise ImageCheckError(
                f"{describe_source(img)}: its {self.percentiles[0]} and {self.percentiles[1]} intensity percentiles "
                f"are both {low:g} (an image almost all one value), so it cannot be normalised."
            )
        return ScaleIntensityRange(low, high, *NETWORK_RANGE, clip=self.clip)(img)


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


class BackgroundFromSourced(MapTransform):
    """
    Set the synthesis to the background value (``-1``, the bottom of the network range: air in CT, no signal in
    MR) where the source has no signal within ``margin`` voxels. Training draws slices through the anatomy, so
    the network never learns what empty slices map to; above and below the brain it draws faint texture that shows
    as a grey band in coronal and sagittal views. Holes of the source's foreground (ventricles that a FLAIR nulls)
    are kept, and the margin keeps the anatomy's edge to the network.

    Args:
        keys: the synthesis, in the network range, on the source's grid.
        source_key: the (normalised) source image.
        threshold: source intensities above it are signal (normalised units; the slice samplers' -0.8).
        margin: voxels of dilation around the signal.
        background: value written outside (network units).
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_key: str = "image",
        threshold: float = -0.8,
        margin: int = 3,
        background: float = NETWORK_RANGE[0],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}.")
        self.source_key, self.threshold, self.margin, self.background = source_key, threshold, margin, background

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        source = np.asarray(convert_to_tensor(d[self.source_key], track_meta=False).detach().cpu())  # (C, *spatial)
        signal = ndi.binary_fill_holes((source > self.threshold).any(0))
        if self.margin:
            signal = ndi.binary_dilation(signal, iterations=self.margin)
        for key in self.key_iterator(d):
            if d[key].shape[1:] != signal.shape:
                raise ValueError(
                    f"'{key}' {tuple(d[key].shape)} and '{self.source_key}' {source.shape} differ in size."
                )
            outside = torch.as_tensor(~signal, device=d[key].device)[None]  # (1, *spatial)
            d[key] = d[key].masked_fill(outside, self.background)
        return d
