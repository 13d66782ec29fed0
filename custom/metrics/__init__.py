"""Figures of synthesis that MONAI's metrics do not cover: PSNR and SSIM inside a mask, patch-grid blockiness,
lesion contrast, through-plane consistency."""

from .synthesis import blockiness, lesion_contrast, masked_psnr, masked_ssim, through_plane_ratio

__all__ = ["blockiness", "lesion_contrast", "masked_psnr", "masked_ssim", "through_plane_ratio"]
