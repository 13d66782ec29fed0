"""Figures of synthesis that MONAI's metrics do not cover: PSNR inside a mask, patch-grid blockiness, lesion contrast,
through-plane consistency."""

from .synthesis import blockiness, lesion_contrast, masked_psnr, through_plane_ratio

__all__ = ["blockiness", "lesion_contrast", "masked_psnr", "through_plane_ratio"]
