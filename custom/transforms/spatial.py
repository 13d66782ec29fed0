"""2-D slice sampling from 3-D volumes, weighted towards slices that hold anatomy."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Spacingd

__all__ = ["foreground_slice_fractions", "ForegroundSlicesd", "RandForegroundSlicesd", "ResampleToSpacingd"]


def foreground_slice_fractions(img: torch.Tensor, spatial_axis: int, threshold: float) -> np.ndarray:
    """Fraction of voxels above ``threshold`` in each slice of a channel-first volume along ``spatial_axis``."""
    foreground = torch.as_tensor(img) > threshold  # (C, *spatial)
    other_axes = [a for a in range(foreground.ndim) if a != spatial_axis + 1]
    return foreground.float().mean(dim=other_axes).cpu().numpy()


class _SliceSampler(MapTransform):
    """Shared slicing of the keyed volumes at chosen indices; subclasses choose the indices."""

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int,
        spatial_axis: int = 2,
        foreground_key: Hashable = "image",
        threshold: float = -0.8,
        min_fraction: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_slices < 1:
            raise ValueError(f"num_slices={num_slices} must be at least 1.")
        if spatial_axis not in (0, 1, 2):
            raise ValueError(f"spatial_axis={spatial_axis} must be 0, 1 or 2 for a 3-D volume.")
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f"min_fraction={min_fraction} must be in [0, 1).")
        self.num_slices = num_slices
        self.spatial_axis = spatial_axis
        self.foreground_key = foreground_key
        self.threshold = threshold
        self.min_fraction = min_fraction

    def _fractions(self, d: Mapping[Hashable, torch.Tensor]) -> np.ndarray:
        volume = d[self.foreground_key]
        if volume.ndim != 4:
            raise ValueError(
                f"'{self.foreground_key}' must be a channel-first 3-D volume to take slices from, got shape "
                f"{tuple(volume.shape)}."
            )
        fractions = foreground_slice_fractions(volume, self.spatial_axis, self.threshold)
        fractions[fractions < self.min_fraction] = 0.0
        if not fractions.any():  # no anatomy above the threshold: fall back to all slices alike
            fractions[:] = 1.0
        return fractions

    def _take(self, d: Mapping[Hashable, torch.Tensor], indices: np.ndarray) -> list[dict[Hashable, torch.Tensor]]:
        source = d[self.foreground_key]
        filename = source.meta.get("filename_or_obj", "") if isinstance(source, MetaTensor) else ""
        samples = []
        for index in indices:
            sample = dict(d)
            for key in self.key_iterator(sample):
                volume = sample[key]
                # a plain tensor: the volume's 3-D affine does not describe a 2-D slice
                volume = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
                sample[key] = volume.select(self.spatial_axis + 1, int(index)).clone()
            sample["slice_index"] = int(index)
            sample["filename"] = str(filename)  # kept so errors during training can name the file
            samples.append(sample)
        return samples


class ForegroundSlicesd(_SliceSampler):
    """``num_slices`` slices evenly spaced over the slices that hold foreground (deterministic; for validation).

    Args:
        keys: volumes to slice alike (e.g. ``["image", "label"]``).
        num_slices: slices taken per volume.
        spatial_axis: axis of the channel-first volume's spatial dimensions to slice along (2 = axial in RAS).
        foreground_key: volume that decides where the foreground is.
        threshold: intensity above which a voxel counts as foreground (after normalisation to [-1, 1]).
        min_fraction: slices with less foreground than this fraction are never taken.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        candidates = np.flatnonzero(self._fractions(data))
        positions = np.linspace(0, len(candidates) - 1, self.num_slices + 2)[1:-1]  # skip the extreme edges
        return self._take(data, candidates[np.round(positions).astype(int)])


class RandForegroundSlicesd(Randomizable, _SliceSampler):
    """``num_slices`` random slices, drawn with probability proportional to their foreground fraction.

    Arguments as :class:`ForegroundSlicesd`.
    """

    def randomize(self, fractions: np.ndarray) -> np.ndarray:
        return self.R.choice(len(fractions), size=self.num_slices, p=fractions / fractions.sum())

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        return self._take(data, self.randomize(self._fractions(data)))


class ResampleToSpacingd(Spacingd):
    """MONAI's :class:`~monai.transforms.Spacingd` that tolerates plain ``{key}_*`` entries beside the image.

    For NIfTI input, MONAI 1.6's ``Spacingd`` updates every ``{key}_*`` entry as if it were a metadata dictionary;
    MONAI Label puts the string ``image_path`` in the data, which would crash it. Such entries are set aside
    during resampling and put back unchanged. Arguments as ``Spacingd``.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        extras = {
            k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], dict)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(extras)
        return d
