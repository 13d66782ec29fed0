"""Builders of realistic DICOM series from the real MNI152 template (nilearn), shared by the DICOM tests.

One file per slice with full geometry, as archives hold them: arbitrary file names without suffix, shuffled
order on disk, InstanceNumber unrelated to position, oblique orientations, rescale slope/intercept, several
series per folder, a missing slice, an Enhanced (multi-frame) MR variant. The writer itself is the product's
(:func:`custom.io.write_dicom_series`), re-exported here as ``write_series`` with its fictitious patient.
"""

from __future__ import annotations

import functools
import unittest
from pathlib import Path

import numpy as np
import torch

from custom.data import load_mni152
from custom.io import write_dicom_series as write_series
from custom.io.synthetic import BIRTH_DATE, PATIENT_ID, PATIENT_NAME

__all__ = [
    "BIRTH_DATE",
    "PATIENT_ID",
    "PATIENT_NAME",
    "AffineStandIn",
    "ct5n_files",
    "mni_volume",
    "rotation",
    "write_series",
]


@functools.lru_cache(maxsize=1)
def mni_volume() -> np.ndarray:
    """A small real T1w brain volume: the 2 mm MNI152 template, central block, every 3rd voxel (about 24×28×18)."""
    vol = load_mni152("t1", 2)[0].astype(np.float64)  # (99, 117, 95)
    vol = vol[14:86:3, 12:96:3, 20:74:3]
    return (vol / vol.max() * 900.0).astype(np.float32)


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


class AffineStandIn(torch.nn.Module):
    """Stand-in synthesiser 2·x + 1: no learned cost, and a known output to check the pipeline against."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x + 1.0


def ct5n_files() -> list[str]:
    """pydicom's real 5-slice axial CT series (files named by number, no suffix)."""
    from pydicom.data import get_testdata_file

    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    return sorted(str(p) for p in folder.iterdir())


class TestFixtures(unittest.TestCase):
    def test_mni_volume_is_real_anatomy(self):
        vol = mni_volume()
        self.assertEqual(vol.ndim, 3)
        self.assertLess(max(vol.shape), 30)
        self.assertGreater(float((vol > 100).mean()), 0.2)  # brain, not an empty block


if __name__ == "__main__":
    unittest.main()
