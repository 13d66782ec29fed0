"""DicomSeriesWriter: the derived series re-read with pydicom, with our reader and with ITK."""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pydicom
from monai.data import MetaTensor
from monai.transforms import LoadImage
from parameterized import parameterized

from custom.io import DicomSeriesError, DicomSeriesReader, DicomSeriesWriter, choose_rescale
from tests.test_dicom_fixtures import PATIENT_ID, ct5n_files, mni_volume, rotation, write_series

RESCALE_CASES = [
    ("nonneg_float", np.linspace(0, 3.7, 1000), 0, True),
    ("signed_float", np.linspace(-1.3, 2.2, 1000), 0, False),
    ("uint_integers", np.arange(0, 4000, dtype=float), 0, True),
    ("hu_integers", np.arange(-1024, 3000, dtype=float), 1, True),
    ("wide_integers", np.array([-40000.0, 0.0, 20000.0]), 0, False),
]


class TestChooseRescale(unittest.TestCase):
    @parameterized.expand(RESCALE_CASES)
    def test_within_rounding(self, _, values, pixel_rep, zero_intercept):
        stored, slope, intercept, rep = choose_rescale(values)
        self.assertEqual(rep, pixel_rep)
        self.assertEqual(stored.dtype, np.int16 if rep else np.uint16)
        back = stored.astype(np.float64) * slope + intercept
        self.assertLessEqual(np.abs(back - values).max(), slope / 2 + 1e-9 * np.abs(values).max())
        self.assertLessEqual(len(pydicom.valuerep.format_number_as_ds(slope)), 16)
        if zero_intercept:
            self.assertEqual(intercept, 0.0)

    def test_rejects_nan(self):
        with self.assertRaises(ValueError):
            choose_rescale(np.array([0.0, np.nan]))


class TestDicomSeriesWriter(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def synthesise(self, files):
        reader = DicomSeriesReader()
        arr, meta = reader.get_data(reader.read(files))
        pred = MetaTensor(2.0 * arr[None] / 7.0 + 1.0, affine=meta["affine"], meta=meta)  # stand-in synthesis
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        return pred, headers

    @parameterized.expand([("axial", None), ("oblique", rotation(0, 20) @ rotation(2, 10))])
    def test_mr_derived_series(self, _, orientation):
        src = write_series(self.tmp / "src", mni_volume(), orientation=orientation)
        pred, headers = self.synthesise(src["files"])
        out = DicomSeriesWriter("MR", "T2w").write(pred, headers, self.tmp / "out")
        self.assertEqual(len(out), len(src["files"]))
        written = [pydicom.dcmread(f) for f in out]  # no force: valid Part 10 files
        src_by_pos = sorted(
            headers,
            key=lambda d: float(
                np.asarray(d.ImagePositionPatient, float)
                @ np.cross(
                    np.asarray(d.ImageOrientationPatient[:3], float), np.asarray(d.ImageOrientationPatient[3:], float)
                )
            ),
        )
        uids = {d.SeriesInstanceUID for d in written}
        self.assertEqual(len(uids), 1)
        self.assertNotEqual(uids.pop(), src["series_uid"])
        self.assertEqual(len({d.SOPInstanceUID for d in written} | set(src["sop_uids"])), 2 * len(out))
        for w, s in zip(written, src_by_pos):
            self.assertEqual(w.SOPClassUID, pydicom.uid.MRImageStorage)
            self.assertEqual(w.file_meta.MediaStorageSOPClassUID, w.SOPClassUID)
            self.assertEqual(w.file_meta.MediaStorageSOPInstanceUID, w.SOPInstanceUID)
            self.assertEqual(w.file_meta.TransferSyntaxUID, pydicom.uid.ExplicitVRLittleEndian)
            self.assertEqual(list(w.ImageType), ["DERIVED", "SECONDARY", "OTHER"])
            self.assertIn("SYNTHETIC", w.SeriesDescription)
            self.assertIn("NOT FOR DIAGNOSTIC USE", w.SeriesDescription)
            self.assertIn(src["series_uid"], w.DerivationDescription)
            self.assertEqual(w.SourceImageSequence[0].ReferencedSOPInstanceUID, s.SOPInstanceUID)
            for tag in (
                "StudyInstanceUID",
                "PatientID",
                "PatientName",
                "PatientBirthDate",
                "FrameOfReferenceUID",
                "AccessionNumber",
                "StudyDate",
            ):
                self.assertEqual(w.get(tag), s.get(tag), tag)
            np.testing.assert_allclose(
                np.asarray(w.ImagePositionPatient, float), np.asarray(s.ImagePositionPatient, float), atol=1e-4
            )
            np.testing.assert_allclose(
                np.asarray(w.ImageOrientationPatient, float), np.asarray(s.ImageOrientationPatient, float), atol=1e-6
            )
            np.testing.assert_allclose(np.asarray(w.PixelSpacing, float), np.asarray(s.PixelSpacing, float))
            self.assertAlmostEqual(float(w.SliceThickness), float(s.SliceThickness))
            self.assertEqual((w.BitsAllocated, w.BitsStored, w.HighBit, w.SamplesPerPixel), (16, 16, 15, 1))
        self.assertEqual(written[0].PatientID, PATIENT_ID)
        # MR: no Modality LUT (viewers ignore it for MR); stored values map to the synthesis by the real world value
        # mapping, and the window is in stored units
        self.assertNotIn("RescaleSlope", written[0])
        self.assertNotIn("RescaleIntercept", written[0])
        rwvm = written[0].RealWorldValueMappingSequence[0]
        slope, intercept = float(rwvm.RealWorldValueSlope), float(rwvm.RealWorldValueIntercept)
        stored = np.stack([w.pixel_array for w in written])
        self.assertGreater(stored.max(), 1000)  # quantised finely, not rounded to the synthesis's units
        self.assertEqual(
            (rwvm.RealWorldValueFirstValueMapped, rwvm.RealWorldValueLastValueMapped), (stored.min(), stored.max())
        )
        lo, hi = np.percentile(stored, [1, 99])
        self.assertAlmostEqual(float(written[0].WindowCenter), (lo + hi) / 2, delta=1)
        self.assertAlmostEqual(float(written[0].WindowWidth), hi - lo, delta=1)
        # our reader and ITK on the output folder: same grid, stored values within rounding of the mapped synthesis
        reader = DicomSeriesReader()
        arr, meta = reader.get_data(reader.read([str(f) for f in out]))
        np.testing.assert_allclose(meta["affine"], pred.affine.numpy(), atol=1e-4)
        self.assertLessEqual(np.abs(arr * slope + intercept - pred[0].numpy()).max(), slope / 2 + 1e-4)
        itk = LoadImage(reader="ITKReader", image_only=True)(str(self.tmp / "out"))
        np.testing.assert_allclose(itk.affine.numpy(), pred.affine.numpy(), atol=1e-3)
        self.assertLessEqual(np.abs(itk.numpy() * slope + intercept - pred[0].numpy()).max(), slope / 2 + 1e-3)

    def test_ct_target_from_pydicom_ct5n(self):
        files = ct5n_files()
        reader = DicomSeriesReader()
        arr, meta = reader.get_data(reader.read(files))
        pred = MetaTensor(np.rint(arr)[None] + 10.0, affine=meta["affine"], meta=meta)  # integral HU
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        out = DicomSeriesWriter("CT", "sCT").write(pred, headers, self.tmp / "ct")
        w = pydicom.dcmread(out[0])
        self.assertEqual(w.SOPClassUID, pydicom.uid.CTImageStorage)
        self.assertEqual(w.Modality, "CT")
        self.assertEqual(w.RescaleType, "HU")
        self.assertIn("RescaleIntercept", w)
        self.assertEqual(list(w.ImageType), ["DERIVED", "SECONDARY", "AXIAL"])
        self.assertNotIn("RealWorldValueMappingSequence", w)
        back, _ = reader.get_data(reader.read([str(f) for f in out]))
        np.testing.assert_array_equal(back, pred[0].numpy())  # integers: exact

    def test_enhanced_source_written_as_single_frames(self):
        src = write_series(self.tmp / "src", mni_volume(), orientation=rotation(1, 15), multiframe=True)
        pred, headers = self.synthesise(src["files"])
        out = DicomSeriesWriter("MR", "T2w").write(pred, headers, self.tmp / "out")
        self.assertEqual(len(out), mni_volume().shape[2])
        refs = [pydicom.dcmread(f).SourceImageSequence[0] for f in out]
        self.assertEqual({int(r.ReferencedFrameNumber) for r in refs}, set(range(1, len(out) + 1)))

    def test_grid_mismatch_is_an_error(self):
        src = write_series(self.tmp / "src", mni_volume())
        pred, headers = self.synthesise(src["files"])
        with self.assertRaisesRegex(DicomSeriesError, "not the source grid"):
            DicomSeriesWriter().write(pred[:, :-1], headers, self.tmp / "a")
        shifted = MetaTensor(pred.as_tensor(), affine=pred.affine.clone(), meta=dict(pred.meta))
        shifted.affine[0, 3] += 5.0
        with self.assertRaisesRegex(DicomSeriesError, "affine does not match"):
            DicomSeriesWriter().write(shifted, headers, self.tmp / "b")

    def test_bad_target_modality(self):
        with self.assertRaisesRegex(ValueError, "target_modality"):
            DicomSeriesWriter("PET")


if __name__ == "__main__":
    unittest.main()
