"""Input checks that turn bad images into one clear message naming the file, before any compute is spent."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

__all__ = ["ImageCheckError", "IneligibleImageError", "CheckImage", "CheckImaged", "CheckPaird", "describe_source"]


class ImageCheckError(ValueError):
    """An input image that the bundle cannot use; the message names the file and the problem."""


class IneligibleImageError(ImageCheckError):
    """A readable image that is not what the model takes (:class:`~custom.transforms.CheckEligible`); a batch run
    reports it as skipped, not failed, as the DICOM batch does ineligible series."""


def describe_source(img: torch.Tensor | np.ndarray, key: Hashable | None = None) -> str:
    """The file an image came from (from its MONAI metadata), else the dictionary key, for error messages."""
    name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    if isinstance(name, (list, tuple)):
        name = name[0] if len(name) == 1 else f"{name[0]} (+{len(name) - 1} files)"
    if name:
        return f"'{name}'"
    return f"image '{key}'" if key is not None else "input image"


class CheckImage(Transform):
    """Reject channel-first images with the wrong dimensionality or channel count, non-finite or constant values.

    Args:
        spatial_dims: accepted numbers of spatial dimensions (e.g. ``(2, 3)``).
        num_channels: required channel count, or None to accept any.
        min_range: the smallest max - min accepted; a constant image carries nothing to translate.
    """

    def __init__(
        self, spatial_dims: Sequence[int] | int = (2, 3), num_channels: int | None = 1, min_range: float = 1e-6
    ) -> None:
        self.spatial_dims = tuple(spatial_dims) if isinstance(spatial_dims, Sequence) else (spatial_dims,)
        if not self.spatial_dims or any(d not in (1, 2, 3) for d in self.spatial_dims):
            raise ValueError(f"spatial_dims={spatial_dims} must be values in (1, 2, 3).")
        self.num_channels = num_channels
        self.min_range = min_range

    def __call__(self, img: torch.Tensor, name: str | None = None) -> torch.Tensor:
        name = name or describe_source(img)
        shape = tuple(img.shape)
        if img.ndim - 1 not in self.spatial_dims:
            raise ImageCheckError(
                f"{name} has shape {shape[1:]} (channel-first {shape}): a {img.ndim - 1}-D image, but "
                f"{' or '.join(f'{d}-D' for d in self.spatial_dims)} single-contrast images are expected. "
                "4-D inputs (time series, several contrasts in one file) must be split first."
            )
        if self.num_channels is not None and shape[0] != self.num_channels:
            raise ImageCheckError(f"{name} has {shape[0]} channels; {self.num_channels} expected.")
        values = torch.as_tensor(img)
        if values.numel() == 0:
            raise ImageCheckError(f"{name} is empty (shape {shape}).")
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            raise ImageCheckError(f"{name} has {int((~finite).sum())} NaN or infinite voxels.")
        if float(values.max() - values.min()) < self.min_range:
            raise ImageCheckError(f"{name} is constant (every voxel is {float(values.flatten()[0])}).")
        return img


class CheckImaged(MapTransform):
    """Dictionary wrapper of :class:`CheckImage`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckImage(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.checker(d[key], describe_source(d[key], key))
        return d


class CheckPaird(MapTransform):
    """Require the images of a pair to share the voxel grid: same shape and, within tolerances, the same affine.

    A paired source and target on different grids would train the network on misaligned anatomy without
    any error, so they are refused here; resample them onto one grid first.

    Args:
        keys: the two keys of the pair, e.g. ``("image", "label")``.
        atol_mm: largest accepted difference of any affine entry (mm for the translation column).
    """

    def __init__(self, keys: KeysCollection, atol_mm: float = 1e-3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys={self.keys} must name exactly two images.")
        self.atol_mm = atol_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        present = list(self.key_iterator(d))
        if len(present) < 2:
            return d
        first, second = (d[k] for k in present)
        names = f"{describe_source(first, present[0])} and {describe_source(second, present[1])}"
        if first.shape[1:] != second.shape[1:]:
            raise ImageCheckError(
                f"{names} form a pair but differ in shape: {tuple(first.shape[1:])} vs {tuple(second.shape[1:])}."
            )
        if isinstance(first, MetaTensor) and isinstance(second, MetaTensor):
            gap = float((first.affine.double() - second.affine.double()).abs().max())
            if gap > self.atol_mm:
                raise ImageCheckError(
                    f"{names} form a pair but their affines differ by up to {gap:.4g} (tolerance {self.atol_mm}); "
                    "resample both onto one grid first."
                )
        return d
