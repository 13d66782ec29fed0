"""The benchmark's synthesis figures on hand-made images whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai.metrics import PSNRMetric, SSIMMetric, compute_ssim_and_cs

from custom.metrics import blockiness, lesion_contrast, masked_psnr, masked_ssim, through_plane_ratio


def _smooth_image(size: int = 48) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 3, size), torch.linspace(0, 2, size), indexing="ij")
    return (torch.sin(x * 2.1) * torch.cos(y * 1.7))[None, None]  # (1, 1, H, W)


def _mosaic(target: torch.Tensor) -> torch.Tensor:
    """8x8 blocks on the grid, with the target's own detail inside them at a tenth of its contrast."""
    return F.interpolate(F.avg_pool2d(target, 8), scale_factor=8, mode="nearest") + 0.1 * target


def test_blockiness_is_one_for_the_target_itself_and_high_for_a_mosaic():
    target = _smooth_image()
    assert blockiness(target, target, patch=8) == pytest.approx(1.0)
    mosaic = _mosaic(target)
    assert 3.0 < blockiness(mosaic, target, patch=8) < 100.0
    shifted = torch.roll(mosaic, shifts=(4, 4), dims=(2, 3))  # same blocks, off the measured grid
    assert blockiness(shifted, target, patch=8) < blockiness(mosaic, target, patch=8)


def test_blockiness_counts_only_differences_inside_the_mask():
    target = _smooth_image()
    mosaic = _mosaic(target)
    mask = torch.zeros_like(target)
    mask[..., 16:24, 16:24] = 1  # one patch: no boundary inside it
    with pytest.raises(ValueError, match="across or inside"):
        blockiness(mosaic, target, patch=8, mask=mask)
    mask[..., 16:32, 16:32] = 1
    assert blockiness(mosaic, target, patch=8, mask=mask) > 3.0


def test_blockiness_3d_and_bad_arguments():
    target = torch.rand(1, 1, 16, 16, 16)
    assert blockiness(target, target, patch=4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="patch"):
        blockiness(target, target, patch=1)
    with pytest.raises(ValueError, match="stacks of one shape"):
        blockiness(target, target[..., :8], patch=4)
    with pytest.raises(ValueError, match="stacks of one shape"):
        blockiness(target[0, 0], target[0, 0], patch=4)  # no batch and channel axes: refused, not misread


def test_lesion_contrast_against_a_hand_computation():
    target = torch.zeros(1, 1, 32, 32)
    lesion = torch.zeros_like(target)
    lesion[..., 10:16, 10:16] = 1
    target[lesion > 0] = 0.8  # lesion 0.8 on a tissue of 0: contrast 0.8
    half = target * 0.5  # a synthesis that keeps half the contrast
    assert lesion_contrast(half, target, lesion) == [pytest.approx(0.5)]
    assert lesion_contrast(target, target, lesion) == [pytest.approx(1.0)]
    vanished = torch.zeros_like(target)
    assert lesion_contrast(vanished, target, lesion) == [pytest.approx(0.0)]


def test_lesion_contrast_ring_and_skips():
    target = torch.zeros(1, 1, 32, 32)
    lesion = torch.zeros_like(target)
    lesion[..., 10:16, 10:16] = 1
    lesion[..., 25:27, 25:27] = 1  # 4 voxels: below min_voxels, skipped
    target[lesion > 0] = 1.0
    pred = target.clone()
    pred[..., 7:19, 7:19] += 0.2  # the 3-voxel ring and the lesion both brighter: contrast unchanged
    assert lesion_contrast(pred, target, lesion, ring=3) == [pytest.approx(1.0)]
    pred_far = target.clone()
    pred_far[..., 5:7, :] = 5.0  # outside the 3-voxel ring: does not count
    assert lesion_contrast(pred_far, target, lesion, ring=3) == [pytest.approx(1.0)]
    flat = torch.zeros_like(target)  # no target contrast: no ratio
    assert lesion_contrast(flat, flat, lesion) == []


def test_masked_psnr():
    target = torch.zeros(1, 1, 8, 8)
    pred = target.clone()
    pred[..., :4, :] = 0.2
    mask = torch.zeros_like(target)
    mask[..., :4, :] = 1
    assert masked_psnr(pred, target, mask) == pytest.approx(10 * math.log10(4 / 0.04))
    assert math.isnan(masked_psnr(pred, target, torch.zeros_like(mask)))


def test_masked_psnr_is_monais_psnr_of_the_region():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 20, 24, generator=g) * 2 - 1
    pred = target + 0.1 * torch.randn(target.shape, generator=g)
    # no mask: the squared error pooled over the whole stack, MONAI's PSNR of the stack as one image
    monai_psnr = float(PSNRMetric(max_val=2.0)(pred.reshape(1, 1, -1), target.reshape(1, 1, -1)))
    assert masked_psnr(pred, target) == pytest.approx(monai_psnr, abs=1e-5)
    assert masked_psnr(pred.numpy(), target.numpy()) == masked_psnr(pred, target)  # arrays alike
    # a mask: MONAI's PSNR of the voxels inside
    mask = torch.rand(target.shape, generator=g) > 0.4
    inside = float(PSNRMetric(max_val=2.0)(pred[mask][None, None], target[mask][None, None]))
    assert masked_psnr(pred, target, mask) == pytest.approx(inside, abs=1e-5)
    assert masked_psnr(target, target) == pytest.approx(120.0 + 10 * math.log10(4))  # floored, not inf


def test_masked_ssim_is_monais_ssim_map_inside_the_mask():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 32, 40, generator=g) * 2 - 1
    pred = (target + 0.3 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    # no mask: SSIMMetric (mean over equal-sized images of each image's mean map)
    assert masked_ssim(pred, target) == pytest.approx(
        float(SSIMMetric(2, data_range=2.0)(pred, target).mean()), abs=1e-6
    )
    # a mask: the map pixels whose 11x11 window is centred inside it
    mask = torch.zeros_like(target)
    mask[:, :, 8:20, 10:30] = 1
    ssim_map, _ = compute_ssim_and_cs(pred, target, 2, [11, 11], [1.5, 1.5], data_range=2.0)  # (2, 1, 22, 30)
    expected = float(ssim_map[:, :, 3:15, 5:25].double().mean())
    assert masked_ssim(pred, target, mask) == pytest.approx(expected, abs=1e-7)
    assert masked_ssim(target, target, mask) == pytest.approx(1.0)
    mask[:] = 0
    mask[:, :, :5] = 1  # only within half a window of the edge: no map pixel
    assert math.isnan(masked_ssim(pred, target, mask))
    volume = torch.rand(1, 1, 16, 16, 16, generator=g)  # 3-D alike
    noisy = volume + 0.2 * torch.rand(volume.shape, generator=g)
    assert masked_ssim(noisy, volume) == pytest.approx(float(SSIMMetric(3, data_range=2.0)(noisy, volume)), abs=1e-6)


def test_through_plane_ratio_is_one_for_the_target_and_high_for_stripes():
    """Slices given independent offsets (what slice-by-slice synthesis without shared context does) are stripes in
    the other two planes; by hand: offsets of +/- a on alternating slices add 2a to every through-plane step."""
    d = torch.linspace(0, 4, 24)
    target = (torch.sin(d)[:, None, None] + torch.cos(d)[None, :, None] + torch.sin(0.5 * d)[None, None, :])[None, None]
    assert through_plane_ratio(target, target) == pytest.approx(1.0)
    a = 0.3
    stripes = target + a * (2 * (torch.arange(24) % 2) - 1).float().reshape(1, 1, 1, 1, 24)

    def steps(v, axis):  # mean |neighbour difference| along one spatial axis
        return (v.narrow(axis, 1, 23) - v.narrow(axis, 0, 23)).abs().mean()

    expected = (steps(stripes, 4) / ((steps(stripes, 2) + steps(stripes, 3)) / 2)) / (
        steps(target, 4) / ((steps(target, 2) + steps(target, 3)) / 2)
    )
    assert through_plane_ratio(stripes, target, slice_axis=2) == pytest.approx(float(expected), rel=1e-5)
    assert through_plane_ratio(stripes, target, slice_axis=2) > 2
    # along another axis the stripes are in-plane: the ratio drops below 1
    assert through_plane_ratio(stripes, target, slice_axis=0) < 1
    # a mask restricts the differences to the region
    mask = torch.zeros_like(target)
    mask[..., :12] = 1
    assert through_plane_ratio(stripes, target, mask=mask) > 2
    with pytest.raises(ValueError, match="volumes"):
        through_plane_ratio(target[..., 0], target[..., 0])
    with pytest.raises(ValueError, match="no neighbouring voxels"):
        through_plane_ratio(stripes, target, mask=torch.zeros_like(target))
