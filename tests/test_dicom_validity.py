"""Our derived series checked by a real DICOM validator: dciodvfy (David Clunie's dicom3tools).

Every file the writer produces must give no "Error" line, for MR and CT targets, from classic and Enhanced
(multi-frame) sources and from pydicom's real CT series. The one warning allowed is Laterality written empty
(unknown) when the source names no body part; with a body part there is no warning at all, in particular none
about a Modality LUT on MR, which MR viewers ignore.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

import pydicom
from monai.data import MetaTensor
from parameterized import parameterized

from custom.io import DicomSeriesReader, DicomSeriesWriter
from tests.test_dicom_fixtures import ct5n_files, mni_volume, rotation, write_series

DCIODVFY = shutil.which("dciodvfy")
_LATERALITY_UNKNOWN = "attribute <Laterality>"

# (name, target modality, source modality, Enhanced multi-frame source)
CASES = [
    ("mr_from_classic_mr", "MR", "MR", False),
    ("mr_from_enhanced_mr", "MR", "MR", True),
    ("ct_from_classic_mr", "CT", "MR", False),
    ("ct_from_enhanced_mr", "CT", "MR", True),
    ("mr_from_enhanced_ct", "MR", "CT", True),
]


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """The "Error" and "Warning" lines dciodvfy reports for one file."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")]


@unittest.skipUnless(DCIODVFY, "dciodvfy not installed (Debian package dicom3tools; .ci/run installs it with apt-get)")
class TestDicomValidity(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, files, target, body_part=None) -> list[Path]:
        reader = DicomSeriesReader()
        arr, meta = reader.get_data(reader.read(files))
        values = 1.7 * arr - 1000.0 if target == "CT" else 2.0 * arr / 7.0 + 1.0  # stand-in synthesis, not integral
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        if body_part:
            for h in headers:
                h.BodyPartExamined = body_part
        pred = MetaTensor(values[None], affine=meta["affine"], meta=meta)
        return DicomSeriesWriter(target, "synthetic").write(pred, headers, self.tmp / "out")

    def assert_valid(self, out: list[Path], allow_unknown_laterality: bool = True):
        self.assertTrue(out)
        for path in out:
            errors, warnings = dciodvfy(path)
            if allow_unknown_laterality:
                warnings = [w for w in warnings if _LATERALITY_UNKNOWN not in w]
            self.assertEqual(errors, [], path.name)
            self.assertEqual(warnings, [], path.name)

    @parameterized.expand(CASES)
    def test_no_errors(self, _, target, source_modality, multiframe):
        src = write_series(
            self.tmp / "src", mni_volume(), orientation=rotation(1, 15), modality=source_modality, multiframe=multiframe
        )
        self.assert_valid(self.write(src["files"], target))

    @parameterized.expand([("MR",), ("CT",)])
    def test_no_warnings_when_body_part_known(self, target):
        src = write_series(self.tmp / "src", mni_volume(), orientation=rotation(0, 20))
        out = self.write(src["files"], target, body_part="HEAD")
        self.assertNotIn("Laterality", pydicom.dcmread(out[0]))
        self.assert_valid(out, allow_unknown_laterality=False)

    def test_ct_from_pydicom_ct5n(self):
        self.assert_valid(self.write(ct5n_files(), "CT"))

    def test_validator_catches_rescaled_mr(self):
        """The check can fail: the pre-fix MR output (Modality LUT, two-valued ImageType) gives an error."""
        src = write_series(self.tmp / "src", mni_volume())
        out = self.write(src["files"], "MR", body_part="HEAD")
        ds = pydicom.dcmread(out[0])
        ds.ImageType, ds.RescaleSlope, ds.RescaleIntercept = ["DERIVED", "SECONDARY"], "0.015", "0"
        ds.save_as(out[0])
        errors, warnings = dciodvfy(out[0])
        self.assertTrue(any("ImageType" in e for e in errors), errors)
        self.assertTrue(any("Modality LUT" in w for w in warnings), warnings)


if __name__ == "__main__":
    unittest.main()
