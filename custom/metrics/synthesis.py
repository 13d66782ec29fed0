"""Synthesis figures for the benchmark and the tests: PSNR and SSIM inside a mask, patch-grid blockiness, lesion
contrast, through-plane consistency.

Every function takes channel-first image stacks ``(N, C, *spatial)`` with intensities in the bundle's normalised
units, and works for 2-D and 3-D images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import compute_ssim_and_cs
from scipy import ndimage as ndi

__all__ = ["masked_psnr", "masked_ssim", "blockiness", "lesion_contrast", "through_plane_ratio"]


def masked_psnr(pred, target, mask=None, data_range: float = 2.0) -> float:
    """
    PSNR (dB) of the squared error pooled over the voxels where ``mask`` > 0 (all voxels when ``mask`` is None):
    MONAI's ``PSNRMetric`` of the whole stack as one image, restricted to a region. NaN when the mask is empty;
    the error is floored at 1e-12 (120 dB at data range 2 for identical images, where MONAI gives inf).

    Args:
        pred: synthesis, tensor or array of any shape.
        target: reference, same shape.
        mask: region, same shape (non-zero = inside); None for every voxel.
        data_range: the intensity range (2 for the bundle's [-1, 1] units).
    """
    err = torch.as_tensor(pred).double() - torch.as_tensor(target).double()
    if mask is not None:
        inside = torch.as_tensor(mask) > 0
        if not bool(inside.any()):
            return float("nan")
        err = err[inside]
    mse = float((err**2).mean())
    return 10.0 * math.log10(data_range**2 / max(mse, 1e-12))


def masked_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    data_range: float = 2.0,
    kernel_size: int = 11,
    kernel_sigma: float = 1.5,
) -> float:
    """
    Mean of MONAI's SSIM map (``compute_ssim_and_cs``: Gaussian window, k1 0.01, k2 0.03, as ``SSIMMetric``) over
    the map pixels whose window centre lies in ``mask``; over the whole map when ``mask`` is None (then it equals
    ``SSIMMetric`` averaged over equal-sized images). NaN when no window centre is inside.

    Args:
        pred: synthesis (N, C, *spatial), 2-D or 3-D.
        target: reference, same shape.
        mask: region (N, 1 or C, *spatial); None for everywhere.
        data_range: the intensity range (2 for the bundle's [-1, 1] units).
        kernel_size: window side in pixels (odd).
        kernel_sigma: Gaussian standard deviation in pixels.
    """
    _check_stacks(pred, target)
    spatial = pred.ndim - 2
    ssim, _ = compute_ssim_and_cs(
        pred, target, spatial, [kernel_size] * spatial, [kernel_sigma] * spatial, data_range=data_range
    )
    if mask is None:
        return float(ssim.double().mean())
    half = kernel_size // 2  # the map is the valid part of the convolution: pixel i has its window centred at i + half
    centres = torch.as_tensor(mask)[(Ellipsis, *[slice(half, n - half) for n in mask.shape[2:]])] > 0
    centres = centres.expand_as(ssim)
    if not bool(centres.any()):
        return float("nan")
    return float(ssim.double()[centres].mean())


def _check_stacks(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.ndim < 4 or pred.shape != target.shape:
        shapes = f"{tuple(pred.shape)} and {tuple(target.shape)}"
        raise ValueError(f"pred and target must be (N, C, *spatial) stacks of one shape, got {shapes}.")


def _neighbour_steps(volume: torch.Tensor, axis: int, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """|difference between voxel i and i + 1| along tensor ``axis``, and where both voxels lie in ``mask`` (all
    True when ``mask`` is None)."""
    n = volume.shape[axis]
    diff = (volume.narrow(axis, 1, n - 1) - volume.narrow(axis, 0, n - 1)).abs()
    if mask is None:
        return diff, torch.ones_like(diff, dtype=torch.bool)
    return diff, (mask.narrow(axis, 1, n - 1) > 0) & (mask.narrow(axis, 0, n - 1) > 0)


def _boundary_ratio(image: torch.Tensor, patch: int, mask: torch.Tensor | None) -> float:
    """Mean |finite difference| across patch boundaries ÷ mean |finite difference| inside patches, all axes."""
    across, inside = [], []
    spatial = image.ndim - 2
    for axis in range(2, 2 + spatial):
        n = image.shape[axis]
        diff, valid = _neighbour_steps(image, axis, mask)
        shape = [1] * diff.ndim
        shape[axis] = n - 1
        starts = (torch.arange(n - 1, device=image.device) + 1) % patch == 0  # voxel i + 1 starts a patch
        crosses = starts.reshape(shape).expand_as(diff)
        across.append(diff[crosses & valid])
        inside.append(diff[~crosses & valid])
    a, b = torch.cat(across), torch.cat(inside)
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError(f"blockiness: no finite differences across or inside {patch}-voxel patches in the region.")
    return float(a.double().mean() / b.double().mean().clamp(min=1e-12))


def blockiness(pred: torch.Tensor, target: torch.Tensor, patch: int, mask: torch.Tensor | None = None) -> float:
    """
    Patch-grid artefacts of a synthesis: (mean |finite difference| across the boundaries of a ``patch``-voxel grid
    that starts at index 0 ÷ mean |finite difference| inside the patches) of ``pred``, divided by the same ratio of
    ``target``. About 1 when the synthesis has no more edges on the grid than the target has; a mosaic of blocks
    is well above 1.

    Args:
        pred: synthesis (N, C, *spatial).
        target: reference, same shape.
        patch: grid period in voxels (the finest level's token stride).
        mask: region (N, 1, *spatial), both voxels of a difference inside; None for everywhere.
    """
    if patch < 2:
        raise ValueError(f"patch must be >= 2 to have boundaries and insides, got {patch}.")
    _check_stacks(pred, target)
    return _boundary_ratio(pred.float(), patch, mask) / _boundary_ratio(target.float(), patch, mask)


def lesion_contrast(
    pred: torch.Tensor,
    target: torch.Tensor,
    lesion: torch.Tensor,
    tissue: torch.Tensor | None = None,
    ring: int = 3,
    min_voxels: int = 10,
    min_target_contrast: float = 0.05,
) -> list[float]:
    """
    How much of each lesion's contrast a synthesis keeps: for every connected lesion component of each image
    (2-D components in 2-D stacks), (mean in the lesion − mean in a ``ring``-voxel ring of tissue around it) in
    ``pred`` ÷ the same in ``target``. 1 is the target's contrast; 0 is a lesion that vanished.

    Args:
        pred: synthesis (N, 1, *spatial).
        target: reference, same shape.
        lesion: lesion mask (N, 1, *spatial).
        tissue: where the ring may lie (e.g. the brain mask); None for anywhere.
        ring: ring width in voxels (binary dilation steps).
        min_voxels: smaller components are skipped (too few voxels for a stable mean).
        min_target_contrast: components whose target contrast is smaller in magnitude are skipped (no ratio).

    Returns:
        one ratio per scored component (empty when there is none).
    """
    _check_stacks(pred, target)
    p, t = pred.double().cpu().numpy(), target.double().cpu().numpy()
    les = lesion.cpu().numpy() > 0
    allowed = np.ones_like(les) if tissue is None else tissue.cpu().numpy() > 0
    ratios = []
    for i in range(les.shape[0]):
        labels, count = ndi.label(les[i, 0])
        for k in range(1, count + 1):
            component = labels == k
            if component.sum() < min_voxels:
                continue
            around = ndi.binary_dilation(component, iterations=ring) & ~les[i, 0] & allowed[i, 0]
            if not around.any():
                continue
            wanted = t[i, 0][component].mean() - t[i, 0][around].mean()
            if abs(wanted) < min_target_contrast:
                continue
            ratios.append(float((p[i, 0][component].mean() - p[i, 0][around].mean()) / wanted))
    return ratios


def _mean_abs_step(volume: torch.Tensor, axis: int, mask: torch.Tensor | None) -> float:
    """Mean |difference between neighbours along ``axis``| where both neighbours lie in ``mask``."""
    diff, valid = _neighbour_steps(volume, axis, mask)
    if mask is not None:
        diff = diff[valid]
    if diff.numel() == 0:
        raise ValueError(f"through_plane_ratio: no neighbouring voxels along spatial axis {axis - 2} in the region.")
    return float(diff.double().mean())


def through_plane_ratio(
    pred: torch.Tensor, target: torch.Tensor, slice_axis: int = 2, mask: torch.Tensor | None = None
) -> float:
    """
    Slice-to-slice consistency of a volume synthesised slice by slice: (mean |difference between neighbouring
    slices| ÷ mean |in-plane difference between neighbours|) of ``pred``, divided by the same ratio of ``target``.
    About 1 when the synthesis varies across slices as the target does; independent slices (horizontal stripes in
    sagittal and coronal views) give well above 1.

    Args:
        pred: synthesised volumes (N, C, H, W, D).
        target: reference, same shape.
        slice_axis: the spatial axis (0, 1 or 2) along which slices were synthesised.
        mask: region (N, 1, H, W, D), both voxels of a difference inside (e.g. the brain); None for everywhere.
    """
    _check_stacks(pred, target)
    if pred.ndim != 5 or slice_axis not in (0, 1, 2):
        raise ValueError(
            f"through_plane_ratio needs (N, C, H, W, D) volumes and a slice_axis in 0..2, got "
            f"{tuple(pred.shape)} and {slice_axis}."
        )

    def ratio(volume: torch.Tensor) -> float:
        volume = volume.float()
        in_plane = [_mean_abs_step(volume, 2 + a, mask) for a in range(3) if a != slice_axis]
        return _mean_abs_step(volume, 2 + slice_axis, mask) / max(float(np.mean(in_plane)), 1e-12)

    return ratio(pred) / ratio(target)
