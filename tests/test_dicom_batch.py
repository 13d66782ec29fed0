"""DicomBatchSynthesis over a realistic, messy folder tree with a stand-in network (2x+1) and plain MONAI transforms."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pydicom
from monai.inferers import SimpleInferer
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    SaveImaged,
    ScaleIntensityd,
)
from pydicom.data import get_testdata_file

from custom.engines import SynthesisError
from custom.io import DicomBatchSynthesis, DicomSeriesReader, without_savers
from tests.test_dicom_fixtures import (
    BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    AffineStandIn,
    ct5n_files,
    mni_volume,
    rotation,
    write_series,
)


def pipeline(with_reader: bool = True):
    pre = Compose(
        [
            LoadImaged(keys="image", reader=DicomSeriesReader()) if with_reader else LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
        ]
    )
    post = Compose([Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)])
    return pre, post


def runner(inp, out, with_reader=True, **kwargs):
    pre, post = pipeline(with_reader)
    kwargs = {**FIXTURE_LIMITS, **kwargs}
    return DicomBatchSynthesis(inp, out, pre, SimpleInferer(), AffineStandIn(), post, **kwargs)


#: The fixtures are a coarse crop of the MNI brain (24x28 voxels, a 29 mm field of view), under the limits for
#: real data (tests/test_dicom_eligibility.py checks those).
FIXTURE_LIMITS = {"min_matrix": 16, "min_fov_mm": 20.0}


class TestDicomBatchSynthesis(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        inp = cls.tmp / "in"
        vol = mni_volume()[:, :, :10]
        # two good MR series: one nested in a folder named after the patient (as exports often are), one sharing
        # its folder with the gappy series
        cls.good_a = write_series(inp / "ZEPHYRINE_TESTPATIENT" / "study" / "s3", vol, description="T1w axial")
        cls.good_b = write_series(
            inp / "mixed",
            vol,
            orientation=rotation(0, 20) @ rotation(2, 10),
            description="T1w oblique",
            series_number=4,
            seed=1,
        )
        cls.gappy = write_series(inp / "mixed", vol, drop_slice=4, description="T1w gappy", series_number=5, seed=2)
        (inp / "junk").mkdir()
        corrupt = bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"garbage"  # preamble, broken header
        (inp / "junk" / "corrupt.dcm").write_bytes(corrupt)
        (inp / "junk" / "README.txt").write_text("not dicom")
        shutil.copy(get_testdata_file("rtdose.dcm"), inp / "junk" / "RD0001")  # non-image object
        ds = pydicom.dcmread(cls.good_a["files"][0])  # MR Spectroscopy object in the source modality, no pixels
        ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.MRSpectroscopyStorage, pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesDescription = "spectroscopy"
        del ds.PixelData
        ds.save_as(inp / "junk" / "spectro", enforce_file_format=True)
        for f in ct5n_files():  # a CT series: not the source modality
            shutil.copy(f, inp / "junk" / f"ct{Path(f).name}")
        (inp / "DICOMDIR").write_bytes(b"")
        cls.inp, cls.out = inp, cls.tmp / "out"
        with cls().assertLogs("custom.io.batch", level="INFO") as logs:
            with cls().assertRaises(SynthesisError) as ctx:
                runner(inp, cls.out).run()
        cls.exit, cls.logs = ctx.exception, "\n".join(logs.output)
        cls.report = json.loads((cls.out / "report.json").read_text())
        cls.by_desc = {r["series_description"]: r for r in cls.report["series"]}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_statuses(self):
        s = self.by_desc
        self.assertEqual(s["T1w axial"]["status"], "written")
        self.assertEqual(s["T1w oblique"]["status"], "written")
        self.assertEqual(s["T1w gappy"]["status"], "failed")
        self.assertIn("missing slice", s["T1w gappy"]["reason"])
        self.assertEqual(s["T1w gappy"]["slices"], 9)
        rtdose = [r for r in self.report["series"] if r["modality"] == "RTDOSE"][0]
        self.assertEqual(rtdose["status"], "skipped")
        self.assertIn("RT Dose Storage", rtdose["reason"])
        spectro = [r for r in self.report["series"] if "Spectroscopy" in r["sop_class"]][0]
        self.assertEqual(spectro["status"], "skipped")
        ct = [r for r in self.report["series"] if r["modality"] == "CT"][0]
        self.assertEqual((ct["status"], ct["slices"]), ("skipped", 5))
        corrupt = [r for r in self.report["series"] if "corrupt.dcm" in r["reason"]]
        self.assertEqual(len(corrupt), 1)
        self.assertEqual(corrupt[0]["status"], "failed")
        self.assertEqual(self.report["counts"], {"written": 2, "skipped": 3, "failed": 2})
        self.assertEqual(self.report["ignored_non_dicom_files"], 1)  # README.txt; DICOMDIR not counted
        self.assertEqual(len(self.report["series"]), 7)

    def test_exit_is_one_line_summary(self):
        self.assertNotIn("\n", str(self.exit))
        self.assertIn("2 failed", str(self.exit))

    def test_output_series(self):
        folders = sorted(p.name for p in self.out.iterdir())
        self.assertEqual([f for f in folders if f.startswith(".")], [])  # nothing partial
        for info, key in ((self.good_a, "T1w axial"), (self.good_b, "T1w oblique")):
            folder = self.out / self.by_desc[key]["output_folder"]
            files = sorted(folder.iterdir())
            self.assertEqual(len(files), len(info["files"]))
            w = [pydicom.dcmread(f) for f in files]
            self.assertNotEqual(w[0].SeriesInstanceUID, info["series_uid"])
            self.assertEqual(w[0].PatientID, PATIENT_ID)
            self.assertEqual(w[0].StudyInstanceUID, pydicom.dcmread(info["files"][0]).StudyInstanceUID)
            reader = DicomSeriesReader()
            arr, meta = reader.get_data(reader.read([str(f) for f in files]))
            v = info["values"]
            expected = 2.0 * (v - v.min()) / (v.max() - v.min()) + 1.0  # stand-in applied after ScaleIntensity
            rwvm = w[0].RealWorldValueMappingSequence[0]  # MR: stored values, mapped to the synthesis here
            slope, intercept = float(rwvm.RealWorldValueSlope), float(rwvm.RealWorldValueIntercept)
            self.assertLessEqual(np.abs(arr * slope + intercept - expected).max(), slope / 2 + 1e-4)
            np.testing.assert_allclose(
                meta["affine"][:3], reader.get_data(reader.read(info["files"]))[1]["affine"][:3], atol=1e-4
            )

    def test_no_patient_data_in_report_csv_log_exit(self):
        texts = {
            "json": (self.out / "report.json").read_text(),
            "csv": (self.out / "report.csv").read_text(),
            "log": self.logs,
            "exit": str(self.exit),
        }
        for where, text in texts.items():
            for secret in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE, "ZEPHYRINE", "TESTPATIENT"):
                self.assertNotIn(secret.lower(), text.lower(), f"{secret} in {where}")
        self.assertIn("[redacted]", texts["json"])  # the patient-named input folder
        rows = list(csv.DictReader(open(self.out / "report.csv")))
        self.assertEqual(len(rows), len(self.report["series"]))
        self.assertEqual({r["status"] for r in rows}, {"written", "skipped", "failed"})


class TestDicomBatchOptions(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.src = write_series(self.tmp / "in", mni_volume()[:, :, :6], description="FLAIR tra")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_overwrite_and_registered_reader_and_nifti(self):
        out = self.tmp / "out"
        r1 = runner(self.tmp / "in", out, with_reader=False).run()  # runner registers its reader
        self.assertEqual(r1[0].status, "written")
        folder = out / r1[0].output_folder
        uid1 = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
        r2 = runner(self.tmp / "in", out).run()
        self.assertEqual(r2[0].status, "skipped")
        self.assertIn("exists", r2[0].reason)
        self.assertEqual(pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID, uid1)
        r3 = runner(self.tmp / "in", out, overwrite=True, save_nifti=True).run()
        self.assertEqual(r3[0].status, "written")
        self.assertNotEqual(pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID, uid1)
        self.assertEqual(len(list(folder.iterdir())), 6)
        self.assertEqual(len(list((out / "nifti").glob("*.nii.gz"))), 2)
        self.assertEqual([p for p in out.iterdir() if p.name.startswith(".")], [])

    def test_description_pattern_and_modality(self):
        r = runner(self.tmp / "in", self.tmp / "o1", series_description_pattern="^t2")
        with self.assertRaisesRegex(SynthesisError, "found no eligible MR series"):  # nothing to do: not a success
            r.run()
        self.assertEqual(r.records[0].status, "skipped")
        self.assertIn("does not match", r.records[0].reason)
        r = runner(self.tmp / "in", self.tmp / "o2", series_description_pattern="flair").run()
        self.assertEqual(r[0].status, "written")
        r = runner(self.tmp / "in", self.tmp / "o3", source_modality="CT")
        with self.assertRaisesRegex(SynthesisError, "found no eligible CT series"):
            r.run()
        self.assertEqual(r.records[0].status, "skipped")

    def test_failure_leaves_nothing_partial(self):
        pre, _ = pipeline()
        bad_post = Compose([])  # does not invert: the writer refuses a prediction off the source grid
        pre.transforms = (*pre.transforms, Orientationd(keys="image", axcodes="PLS"))
        with self.assertRaises(SynthesisError):
            DicomBatchSynthesis(
                self.tmp / "in", self.tmp / "out", pre, SimpleInferer(), AffineStandIn(), bad_post, **FIXTURE_LIMITS
            ).run()
        report = json.loads((self.tmp / "out" / "report.json").read_text())
        self.assertEqual(report["series"][0]["status"], "failed")
        self.assertIn("does postprocessing invert", report["series"][0]["reason"])
        self.assertEqual(sorted(p.name for p in (self.tmp / "out").iterdir()), ["report.csv", "report.json"])

    def test_postprocessing_that_saves_is_refused(self):
        pre, post = pipeline()
        saving = Compose([*post.transforms, SaveImaged(keys="pred", output_dir=str(self.tmp / "nii"))])
        with self.assertRaisesRegex(ValueError, "must not save"):
            DicomBatchSynthesis(self.tmp / "in", self.tmp / "out", pre, SimpleInferer(), AffineStandIn(), saving)
        self.assertEqual(len(without_savers(saving).transforms), 1)
        with self.assertRaisesRegex(ValueError, "LoadImaged"):
            DicomBatchSynthesis(self.tmp / "in", self.tmp / "out", Compose([]), SimpleInferer(), AffineStandIn(), post)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    unittest.main()
