"""DicomSeriesReader: geometry, slice order, rescale, multi-frame, agreement with ITK, and errors that name things."""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pydicom
from monai.data.utils import orientation_ras_lps
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from parameterized import parameterized

from custom.io import DicomSeriesError, DicomSeriesReader
from tests.test_dicom_fixtures import ct5n_files, mni_volume, rotation, write_series

GEOMETRIES = [
    ("axial", None, False),
    ("oblique", rotation(0, 20) @ rotation(2, 10), False),
    ("sagittal", np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float).T @ np.eye(3), False),
    ("oblique_in_order", rotation(1, -35), True),
]


def read(files):
    reader = DicomSeriesReader()
    return reader.get_data(reader.read(files))


class TestDicomSeriesReader(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    @parameterized.expand(GEOMETRIES)
    def test_round_trip_geometry(self, _, orientation, in_order):
        info = write_series(self.tmp, mni_volume(), orientation=orientation, shuffle=not in_order)
        arr, meta = read(info["files"])
        np.testing.assert_array_equal(arr, info["values"])  # stored exactly: slope/intercept applied
        np.testing.assert_allclose(meta["affine"], orientation_ras_lps(info["affine_lps"]), atol=1e-5)
        np.testing.assert_allclose(meta["original_affine"], meta["affine"])
        np.testing.assert_array_equal(meta["spatial_shape"], mni_volume().shape)
        np.testing.assert_allclose(meta["spacing"], [1.2, 1.1, 2.5], atol=1e-6)
        self.assertEqual(meta["SeriesInstanceUID"], info["series_uid"])
        self.assertTrue(np.isnan(meta["original_channel_dim"]))

    def test_file_order_does_not_matter(self):
        info = write_series(self.tmp, mni_volume(), orientation=rotation(0, 20))
        a1, m1 = read(info["files"])
        a2, m2 = read(list(reversed(info["files"])))
        a3, m3 = read(self.tmp)  # a folder holding one series
        for a, m in ((a2, m2), (a3, m3)):
            np.testing.assert_array_equal(a, a1)
            np.testing.assert_allclose(m["affine"], m1["affine"])

    def test_per_slice_rescale(self):
        info = write_series(self.tmp, mni_volume(), per_slice_slope=True)
        arr, _ = read(info["files"])
        np.testing.assert_allclose(arr, info["values"], rtol=1e-6, atol=1e-4)

    def test_matches_itk_reader(self):
        info = write_series(self.tmp, mni_volume(), orientation=rotation(0, 20) @ rotation(2, 10))
        arr, meta = read(info["files"])
        itk = LoadImage(reader="ITKReader", image_only=True)(self.tmp)
        np.testing.assert_allclose(itk.numpy(), arr, atol=1e-4)
        np.testing.assert_allclose(itk.affine.numpy(), meta["affine"], atol=1e-4)

    def test_pydicom_ct5n(self):
        files = ct5n_files()
        arr, meta = read(files)
        self.assertEqual(arr.shape, (16, 16, 5))
        itk = LoadImage(reader="ITKReader", image_only=True)(os.path.dirname(files[0]))
        np.testing.assert_array_equal(itk.numpy(), arr)
        np.testing.assert_allclose(itk.affine.numpy(), meta["affine"], atol=1e-4)
        # sorted by position (increasing z in LPS -> slice 0 is the lowest), not by InstanceNumber
        self.assertAlmostEqual(float(meta["affine"][2, 3]), -1.2375, places=4)
        self.assertAlmostEqual(float(meta["affine"][2, 2]), 2.5, places=4)
        self.assertLess(arr.min(), -800)  # HU: RescaleIntercept -1024 applied

    def test_enhanced_multiframe_equals_single_frame(self):
        single = write_series(Path(self.tmp) / "s", mni_volume(), orientation=rotation(1, 15))
        multi = write_series(
            Path(self.tmp) / "m", mni_volume(), orientation=rotation(1, 15), multiframe=True, series_uid=None, seed=3
        )
        a1, m1 = read(single["files"])
        a2, m2 = read(multi["files"])
        np.testing.assert_array_equal(a2, a1)
        np.testing.assert_allclose(m2["affine"], m1["affine"], atol=1e-5)

    def test_load_imaged_and_verify_suffix(self):
        info = write_series(self.tmp, mni_volume())
        pre = Compose([LoadImaged(keys="image", reader=DicomSeriesReader()), EnsureChannelFirstd(keys="image")])
        img = pre({"image": info["files"]})["image"]
        self.assertEqual(tuple(img.shape), (1, *mni_volume().shape))
        np.testing.assert_allclose(img.affine.numpy(), orientation_ras_lps(info["affine_lps"]), atol=1e-5)
        reader = DicomSeriesReader()
        self.assertTrue(reader.verify_suffix(info["files"]))
        self.assertTrue(reader.verify_suffix(self.tmp))
        Path(self.tmp, "x.nii.gz").write_bytes(b"")
        self.assertFalse(reader.verify_suffix(str(Path(self.tmp, "x.nii.gz"))))
        self.assertFalse(reader.verify_suffix(str(Path(self.tmp, "missing"))))


class TestDicomSeriesReaderErrors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assert_error(self, files, *fragments):
        with self.assertRaises(DicomSeriesError) as ctx:
            read(files)
        for fragment in fragments:
            self.assertIn(fragment, str(ctx.exception))
        return str(ctx.exception)

    def test_missing_slice(self):
        info = write_series(self.tmp, mni_volume(), drop_slice=7, description="gappy")
        msg = self.assert_error(info["files"], "1 missing slice", info["series_uid"], "'gappy'", self.tmp)
        self.assertNotIn("TESTPATIENT", msg)

    def test_inconsistent_orientation(self):
        a = write_series(self.tmp, mni_volume()[:, :, :4])
        b = write_series(
            Path(self.tmp) / "b",
            mni_volume()[:, :, 4:8],
            orientation=rotation(2, 5),
            series_uid=a["series_uid"],
            origin=(-30, -40, -10),
        )
        self.assert_error(a["files"] + b["files"], "inconsistent ImageOrientationPatient")

    def test_mixed_sizes(self):
        a = write_series(self.tmp, mni_volume()[:, :, :4])
        b = write_series(
            Path(self.tmp) / "b", mni_volume()[:20, :, 4:8], series_uid=a["series_uid"], origin=(-30, -40, -10)
        )
        self.assert_error(a["files"] + b["files"], "mixed image sizes")

    def test_inconsistent_spacing(self):
        a = write_series(self.tmp, mni_volume()[:, :, :4])
        b = write_series(
            Path(self.tmp) / "b",
            mni_volume()[:, :, :3],
            series_uid=a["series_uid"],
            origin=(-30, -40, -20 + 4 * 2.5 + 0.8),
        )
        self.assert_error(a["files"] + b["files"], "inconsistent slice spacing")

    def test_duplicate_position(self):
        info = write_series(self.tmp, mni_volume()[:, :, :4])
        dup = Path(self.tmp) / "dup"
        ds = pydicom.dcmread(info["files"][0])
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(dup)
        self.assert_error(info["files"] + [str(dup)], "repeats the slice position")

    def test_non_image_sop_class(self):
        from pydicom.data import get_testdata_file

        self.assert_error([get_testdata_file("rtdose.dcm")], "RT Dose Storage", "not a supported MR/CT image")

    def test_truncated_pixel_data_names_file(self):
        info = write_series(self.tmp, mni_volume()[:, :, :4])
        bad = info["files"][2]
        data = Path(bad).read_bytes()
        Path(bad).write_bytes(data[: len(data) - 300])
        self.assert_error(info["files"], bad)

    def test_two_series_in_folder(self):
        write_series(self.tmp, mni_volume()[:, :, :3])
        write_series(self.tmp, mni_volume()[:, :, :3], seed=1)
        self.assert_error(self.tmp, "2 series")


if __name__ == "__main__":
    unittest.main()
