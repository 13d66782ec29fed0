"""Slice-by-slice inference in the plane a single slice or thin slab was acquired in."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from monai.inferers import SliceInferer
from monai.utils import MetaKeys

from custom.io.eligibility import THIN_SLAB_SLICES
from custom.io.geometry import acquisition_axis
from custom.transforms.eligibility import thin_axis

__all__ = ["AcquisitionPlaneSliceInferer"]


class AcquisitionPlaneSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer` that slices a single slice or a slab thinner than
    ``thin_slab_slices`` along its own acquisition plane, whatever ``spatial_dim`` says: after reorientation to RAS a
    single sagittal slice lies across axis 0, and slicing it across axis 2 would give the network one-pixel strips.

    The source is the file the input was loaded from, as MONAI's metadata gives it (``spatial_shape`` and
    ``original_affine``): the axis across its slices is its shortest voxel axis
    (:func:`~custom.transforms.thin_axis`), and the input is sliced across its own voxel axis closest to that
    direction (:func:`~custom.io.geometry.acquisition_axis`). Volumes, and inputs without that metadata, are sliced
    across ``spatial_dim``. The first input of a batch decides (inference runs one volume per batch).

    Args:
        thin_slab_slices: sources with fewer voxels along an axis are sliced across it
            (:data:`~custom.io.eligibility.THIN_SLAB_SLICES`).
        args, kwargs: as :class:`~monai.inferers.SliceInferer` (``spatial_dim``, ``roi_size``, ...).

    Example::

        inferer = AcquisitionPlaneSliceInferer(spatial_dim=2, roi_size=(-1, -1))
        pred = inferer(image[None], network)  # a (1, 1, 1, 117, 95) sagittal slice is sliced across axis 0
    """

    def __init__(self, *args: Any, thin_slab_slices: int = THIN_SLAB_SLICES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.thin_slab_slices = thin_slab_slices

    def slice_axis(self, inputs: torch.Tensor) -> int:
        """The spatial axis of the batch ``inputs`` (B, C, H, W, D) to slice across."""
        meta = getattr(inputs, "meta", {})
        if MetaKeys.SPATIAL_SHAPE not in meta or MetaKeys.ORIGINAL_AFFINE not in meta:
            return self.spatial_dim
        axis = thin_axis(np.asarray(meta[MetaKeys.SPATIAL_SHAPE]).reshape(-1, 3)[0], self.thin_slab_slices)
        if axis is None:
            return self.spatial_dim
        source = np.asarray(meta[MetaKeys.ORIGINAL_AFFINE], np.float64).reshape(-1, 4, 4)[0, :3, :3]
        affine = np.asarray(inputs.affine, np.float64).reshape(-1, 4, 4)[0]
        return acquisition_axis(affine, np.roll(source, 2 - axis, axis=1))  # it takes the slice axis as axis 2

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        axis = self.slice_axis(inputs)
        if axis == self.spatial_dim:
            return super().__call__(inputs, network, *args, **kwargs)
        inferer = copy.copy(self)  # this one keeps its configured axis for the next input
        inferer.spatial_dim = axis
        return SliceInferer.__call__(inferer, inputs, network, *args, **kwargs)
