"""Figures of synthesis that MONAI's metrics do not cover: PSNR inside a mask, patch-grid blockiness, lesion contrast."""

from .synthesis import blockiness, lesion_contrast, masked_psnr

__all__ = ["blockiness", "lesion_contrast", "masked_psnr"]
