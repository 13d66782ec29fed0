"""Issue 15, DICOM side: only eligible series are synthesised, the rest are skipped with the reason.

Cases built like the real ones: a study holding a Siemens EPI mosaic (nibabel's real DTI mosaic files), a phase
field map, a projection, a CT-style localizer, a Siemens tri-plane localizer, a 16x16 calibration scan, a 20 mm
field of view (pydicom's real MR_small.dcm), a two-echo series and a real-size brain series; a truncated byte copy
of a slice; a single sagittal slice and a thin coronal slab; a whole head with skull (the MNI brain inside
literature layers of CSF, skull and scalp, by the demo simulation's signal equation); a CT-only archive.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import torch
from parameterized import parameterized
from pydicom.data import get_testdata_file
from scipy import ndimage as ndi

from custom.data import load_mni152
from custom.data.simulation import SEQUENCES, TISSUE_PROPERTIES, Relaxation, signal_equation
from custom.engines import SynthesisError
from custom.io import DicomBatchSynthesis
from custom.io.eligibility import MAX_SKULL_FRACTION, skull_shell_fraction
from custom.inferers import AcquisitionPlaneSliceInferer
from tests.test_dicom_batch import pipeline
from tests.test_dicom_fixtures import PATIENT_NAME, AffineStandIn, ct5n_files, mni_volume, rotation, write_series
from tests.test_dicom_validity import DCIODVFY, dciodvfy
from tests.test_hostile_dicom_batch import HostileCase, restamp
from tests.demo_subject import demo_test_subject

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1111"  # write_series' default
# LPS direction matrices (columns: row direction, column direction, slice normal) as scanners write them
SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # IOP 0\1\0\0\0\-1
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # IOP 1\0\0\0\0\-1


@functools.lru_cache(maxsize=1)
def mni_brain() -> np.ndarray:
    """The 2 mm MNI152 T1 (skull-stripped, real anatomy) as an axial stack: (columns R->L, rows A->P, slices I->S)."""
    vol = load_mni152("t1", resolution=2)[0][::-1, ::-1, :]  # RAS -> LPS
    return vol / vol.max() * 900.0


# ---------------------------------------------------------------------------------------------- head with skull
#: Extra-cranial tissues at 1.5 T (literature means) for the demo simulation's signal equation; cortical bone gives
#: next to no MR signal (T2* well under 1 ms).
EXTRA_TISSUES = {
    "fat": Relaxation(t1=260.0, t2=80.0, pd=0.9),
    "muscle": Relaxation(t1=870.0, t2=47.0, pd=0.7),
    "bone": Relaxation(t1=1000.0, t2=0.5, pd=0.05),
    "marrow": Relaxation(t1=300.0, t2=90.0, pd=0.85),
}
#: Layers outward from the brain mask, (tissue, outer distance in mm): CSF, inner table, diploe, outer table, galea,
#: subcutaneous fat, skin; a 6.5 mm skull under 7 mm of scalp (adult means). Thin and thick variants below.
LAYERS = (
    ("csf", 2.0),
    ("bone", 4.0),
    ("marrow", 6.5),
    ("bone", 8.5),
    ("muscle", 10.0),
    ("fat", 14.0),
    ("muscle", 15.5),
)
THIN = (("csf", 1.5), ("bone", 3.0), ("marrow", 4.0), ("bone", 5.5), ("muscle", 6.5), ("fat", 9.0), ("muscle", 10.0))
THICK = (
    ("csf", 3.0),
    ("bone", 6.0),
    ("marrow", 10.0),
    ("bone", 13.0),
    ("muscle", 15.0),
    ("fat", 20.0),
    ("muscle", 22.0),
)


@functools.lru_cache(maxsize=1)
def _anatomy():
    """MNI152 grey and white matter, brain mask (1 mm, padded for a scalp) and the distance outside the mask."""
    gm, wm, mask = (np.pad(load_mni152(kind, resolution=1)[0], 24) for kind in ("gm", "wm", "mask"))
    return gm, wm, mask > 0, ndi.distance_transform_edt(mask == 0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def head_phantom(contrast: str = "t1w", skull: bool = True, layers=LAYERS, resolution: int = 2, noise: float = 0.015):
    """The MNI brain in ``contrast`` (1.5 T spin echo or FLAIR), inside ``layers`` of CSF, skull and scalp when
    ``skull``; made at 1 mm, averaged to ``resolution`` (1 or 2) mm voxels (partial volume), Rician noise of
    ``noise`` x the 99th percentile. Axes RAS."""
    gm, wm, mask, distance = _anatomy()

    def signal(tissue: str) -> np.float32:
        r = TISSUE_PROPERTIES.get(tissue) or EXTRA_TISSUES[tissue]
        return np.float32(
            abs(signal_equation(SEQUENCES[contrast], np.float64(r.t1), np.float64(r.t2), np.float64(r.pd)))
        )

    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    image = (gm * signal("gm") + wm * signal("wm") + csf * signal("csf")) * mask
    inner = 0.0
    for tissue, outer in layers if skull else ():
        image[(distance > inner) & (distance <= outer)] = signal(tissue)
        inner = outer
    image = ndi.gaussian_filter(image, 0.5) * np.float32(2000.0)
    if resolution == 2:
        n = [k // 2 for k in image.shape]
        image = image[: 2 * n[0], : 2 * n[1], : 2 * n[2]].reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))
    sigma = np.float32(noise * np.percentile(image, 99))
    rng = np.random.default_rng(0)
    return np.hypot(
        image + sigma * rng.standard_normal(image.shape, np.float32),
        sigma * rng.standard_normal(image.shape, np.float32),
    )


def central_slices(volume: np.ndarray):
    """(axis, single-slice volume) for the central slice across each axis."""
    return [(axis, np.take(volume, [volume.shape[axis] // 2], axis)) for axis in range(3)]


class TestSkullShellFraction(unittest.TestCase):
    """The head check separates whole heads from skull-stripped brains in every contrast, as volumes and slices."""

    @parameterized.expand([(c,) for c in ("t1w", "t2w", "pdw", "flair")])
    def test_heads_and_brains_in_four_contrasts(self, contrast):
        """2 mm voxels, where partial volume hides most of the skull; 4 % noise on the brains (FLAIR's enclosed
        medial sulci come closest to the limit)."""
        for layers in (LAYERS, THIN):
            head = head_phantom(contrast, True, layers)
            self.assertGreater(skull_shell_fraction(head, (2, 2, 2)), MAX_SKULL_FRACTION)
            for axis, one in central_slices(head):
                self.assertGreater(skull_shell_fraction(one, (2, 2, 2), axis), MAX_SKULL_FRACTION, (layers, axis))
        brain = head_phantom(contrast, False, noise=0.04)
        self.assertLess(skull_shell_fraction(brain, (2, 2, 2)), MAX_SKULL_FRACTION / 10)
        for axis, one in central_slices(brain):
            self.assertLess(skull_shell_fraction(one, (2, 2, 2), axis), MAX_SKULL_FRACTION, axis)

    def test_real_skull_stripped_brains(self):
        """The demo data (simulated subjects with lesions, Rician noise), the MNI template, the fixtures' crop."""
        demo = demo_test_subject()
        for contrast in ("t1w", "t2w"):
            image = nibabel.load(demo / f"{contrast}.nii.gz")
            self.assertLess(skull_shell_fraction(image.get_fdata(), image.header.get_zooms()), MAX_SKULL_FRACTION / 10)
        self.assertLess(skull_shell_fraction(mni_brain(), (2, 2, 2)), MAX_SKULL_FRACTION / 10)
        self.assertLess(skull_shell_fraction(mni_volume(), (1.2, 1.1, 2.5)), MAX_SKULL_FRACTION / 10)

    def test_not_3d(self):
        with self.assertRaisesRegex(ValueError, "3-D"):
            skull_shell_fraction(np.zeros((4, 4)), (1, 1))


# ------------------------------------------------------------------------------------------------------ runs
class DicomCase(HostileCase):
    """A temporary ``in`` and ``out``; runs at the limits for real data, sliced as inference.json slices."""

    def runner(self, network=None, **kwargs) -> DicomBatchSynthesis:
        pre, post = pipeline()
        inferer = AcquisitionPlaneSliceInferer(roi_size=(-1, -1), spatial_dim=2, progress=False)  # as inference.json
        return DicomBatchSynthesis(self.inp, self.out, pre, inferer, network or AffineStandIn(), post, **kwargs)

    def rows(self) -> list[dict]:
        return json.loads((self.out / "report.json").read_text())["series"]

    def assert_valid(self, folder: Path, count: int):
        files = sorted(folder.iterdir())
        self.assertEqual(len(files), count)
        for path in files if DCIODVFY else []:  # dciodvfy where installed (tests/test_dicom_validity.py says why)
            self.assertEqual(dciodvfy(path)[0], [], path.name)


class TestEligibilityInAStudy(DicomCase):
    """One study as an archive holds it: each ineligible series is skipped with its reason, the brain series is
    written, and the run ends without an error (SynthesisError)."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp())
        cls.inp, cls.out = cls.tmp / "in", cls.tmp / "out"
        brain = mni_brain()[:, :, 30:60:2]  # 99x117 at 2 mm (198x234 mm), 15 slices
        slab = brain[:, :, 5:8]
        cls.brain = write_series(cls.inp / "t1", brain, spacing=(2.0, 2.0, 4.0), description="T1w SE tra")
        restamp(cls.brain["files"], StudyDescription=f"MRI BRAIN {PATIENT_NAME.split('^')[1]}")
        for desc, number, image_type in (
            ("gre_field_mapping phase", 5, ["ORIGINAL", "PRIMARY", "P", "ND"]),  # Siemens phase difference map
            ("MIP tra", 6, ["DERIVED", "PRIMARY", "PROJECTION IMAGE"]),
            ("scout", 7, ["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        ):
            info = write_series(
                cls.inp / desc.split()[0], slab, spacing=(2.0, 2.0, 4.0), description=desc, series_number=number
            )
            restamp(info["files"], ImageType=image_type)
        # Siemens AAHead_Scout: one series, three planes, ImageType without the word LOCALIZER
        uid = pydicom.uid.generate_uid()
        for k, orientation in enumerate((None, SAGITTAL, CORONAL)):
            write_series(
                cls.inp / "localizer",
                slab,
                spacing=(2.0, 2.0, 8.0),
                orientation=orientation,
                series_uid=uid,
                description="AAHead_Scout",
                series_number=1,
                seed=k,
            )
        calibration = write_series(
            cls.inp / "calibration",
            slab[:16, :16],
            spacing=(16.0, 16.0, 4.0),
            description="calibration 16x16",
            series_number=2,
        )
        restamp(calibration["files"], ImageType=["ORIGINAL", "PRIMARY", "M", "ND"])
        uid = pydicom.uid.generate_uid()  # field map magnitude: two echoes at every position, one series
        for echo in (1, 2):
            info = write_series(
                cls.inp / "fieldmap",
                slab,
                spacing=(2.0, 2.0, 4.0),
                series_uid=uid,
                seed=echo,
                description="gre_field_mapping",
                series_number=4,
            )
            restamp(info["files"], EchoNumbers=echo, ImageType=["ORIGINAL", "PRIMARY", "M", "ND"])
        (cls.inp / "dti").mkdir()
        for name in ("0.dcm", "1.dcm"):  # real Siemens DTI mosaics (one file per diffusion direction)
            shutil.copy(NIBABEL_DATA / name, cls.inp / "dti" / name)
        (cls.inp / "detail").mkdir()
        shutil.copy(get_testdata_file("MR_small.dcm"), cls.inp / "detail" / "IM0001")  # real: 64x64, 0.3125 mm
        cls.records = DicomBatchSynthesis(cls.inp, cls.out, *cls._parts()).run()  # no SynthesisError: exit status 0
        cls.report = json.loads((cls.out / "report.json").read_text())
        cls.by_desc = {r["series_description"]: r for r in cls.report["series"]}

    @staticmethod
    def _parts():
        pre, post = pipeline()
        return (
            pre,
            AcquisitionPlaneSliceInferer(roi_size=(-1, -1), spatial_dim=2, progress=False),
            AffineStandIn(),
            post,
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):  # the class's run is shared
        pass

    def tearDown(self):
        pass

    @parameterized.expand(
        [
            ("mosaic", "CBU_DTI_64D_1A", "ImageType MOSAIC"),
            ("phase", "gre_field_mapping phase", "ImageType P:"),
            ("projection", "MIP tra", "ImageType PROJECTION IMAGE"),
            ("localizer", "scout", "ImageType LOCALIZER"),
            ("tri_plane_localizer", "AAHead_Scout", "3 slice orientations"),
            ("matrix_16x16", "calibration 16x16", "matrix 16x16 is smaller than 64x64"),
            ("field_of_view_20mm", "", "field of view 20x20 mm is smaller than 100 mm"),
            ("two_echoes", "gre_field_mapping", "6 images at 3 slice positions"),
        ]
    )
    def test_skipped_with_reason(self, _, description, reason):
        row = self.by_desc[description]
        self.assertEqual(row["status"], "skipped")
        self.assertIn(reason, row["reason"])
        self.assertEqual(row["output_folder"], "")

    def test_brain_written_and_valid(self):
        row = self.by_desc["T1w SE tra"]
        self.assertEqual((row["status"], row["reason"], row["slices"]), ("written", "", 15))
        self.assert_valid(self.out / row["output_folder"], 15)
        self.assertEqual(self.report["counts"], {"written": 1, "skipped": 8, "failed": 0})

    def test_report_has_study_and_series_number(self):
        row = self.by_desc["T1w SE tra"]
        self.assertEqual(
            (row["study_instance_uid"], row["study_date"], row["series_number"]), (STUDY_UID, "20240102", "3")
        )
        self.assertEqual(row["study_description"], "MRI BRAIN [redacted]")  # free text: the patient's name redacted
        self.assertEqual(self.by_desc["CBU_DTI_64D_1A"]["series_number"], "12")
        table = list(csv.DictReader(open(self.out / "report.csv")))
        self.assertEqual(
            {
                r["study_instance_uid"]
                for r in table
                if r["series_description"] != "CBU_DTI_64D_1A" and r["series_description"]
            },
            {STUDY_UID},
        )
        self.assertIn("study_description", table[0])


class TestDuplicatesAndTruncation(DicomCase):
    def test_truncated_byte_copy_of_a_slice(self):
        """Same SOPInstanceUID, pixel data cut short: the copy gets a row of its own; the series is written whole."""
        info = write_series(self.inp, mni_brain()[:, :, 30:60:2], spacing=(2.0, 2.0, 4.0), shuffle=False)
        raw = Path(info["files"][7]).read_bytes()
        (self.inp / "copy_of_slice_8").write_bytes(raw[:-5000])
        records = self.runner().run()  # no SynthesisError: nothing failed
        series = [r for r in records if r.series_instance_uid][0]
        self.assertEqual((series.status, series.slices, series.reason), ("written", 15, ""))
        self.assert_valid(self.out / series.output_folder, 15)
        copy = [r for r in records if not r.series_instance_uid][0]
        self.assertEqual(copy.status, "skipped")
        self.assertIn("copy_of_slice_8: another copy of a SOP instance", copy.reason)
        self.assertIn("pixel data cut short", copy.reason)

    def test_truncated_edge_slice_is_reported_and_the_rest_written(self):
        info = write_series(self.inp, mni_brain()[:, :, 30:60:2], spacing=(2.0, 2.0, 4.0), shuffle=False)
        Path(info["files"][-1]).write_bytes(Path(info["files"][-1]).read_bytes()[:-5000])
        with self.assertRaisesRegex(SynthesisError, "1 failed"):  # the unreadable file is a failure of its own
            self.runner().run()
        rows = self.rows()
        series = [r for r in rows if r["series_instance_uid"]][0]
        self.assertEqual((series["status"], series["slices"]), ("written", 14))
        self.assertIn("slices may be missing", series["reason"])
        failed = [r for r in rows if r["status"] == "failed"][0]
        self.assertIn("unreadable instance", failed["reason"])
        self.assertIn("pixel data cut short", failed["reason"])


class RecordingStandIn(AffineStandIn):
    """2x+1, remembering the spatial shape of every input it sees."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add(tuple(x.shape[2:]))
        return super().forward(x)


class TestSlicingPlane(DicomCase):
    """A single slice or a thin slab is sliced along its acquisition plane, whatever the configured slice axis."""

    @parameterized.expand(
        [
            # (name, LPS orientation, slices, spatial shape the network must see)
            ("single_sagittal_slice", SAGITTAL, 1, {(117, 95)}),
            ("thin_coronal_slab", CORONAL, 3, {(99, 95)}),
            ("sagittal_volume_keeps_the_configured_axis", SAGITTAL, 10, {(10, 117)}),
        ]
    )
    def test_network_sees_whole_slices(self, _, orientation, slices, expected):
        brain = mni_brain()  # (R->L, A->P, I->S)
        if orientation is SAGITTAL:  # columns A->P, rows S->I, slices L->R (the normal of IOP 0\1\0\0\0\-1 is -x)
            stack = brain[49 - slices // 2 : 49 + (slices + 1) // 2, :, ::-1].transpose(1, 2, 0)[:, :, ::-1]
        else:  # columns R->L, rows S->I, slices A->P (the normal of IOP 1\0\0\0\0\-1 is +y)
            stack = brain[:, 58 - slices // 2 : 58 + (slices + 1) // 2, ::-1].transpose(0, 2, 1)
        info = write_series(
            self.inp,
            np.ascontiguousarray(stack),
            spacing=(2.0, 2.0, 5.0),
            orientation=orientation,
            description="T2w TSE",
        )
        network = RecordingStandIn()
        record = self.runner(network=network).run()[0]
        self.assertEqual((record.status, record.slices), ("written", slices))
        self.assertEqual(network.seen, expected)
        self.assert_valid(self.out / record.output_folder, slices)
        written = pydicom.dcmread(next((self.out / record.output_folder).iterdir()))
        np.testing.assert_allclose(
            [float(x) for x in written.ImageOrientationPatient],
            [float(x) for x in pydicom.dcmread(info["files"][0]).ImageOrientationPatient],
        )


class TestHeadWithSkull(DicomCase):
    def write(self, skull: bool, folder: str) -> dict:
        head = head_phantom("t1w", skull)[::-1, ::-1, 30:95:4]  # RAS -> LPS axial stack, 4 mm apart
        return write_series(
            self.inp / folder,
            np.ascontiguousarray(head.astype(np.float32)),
            spacing=(2.0, 2.0, 4.0),
            description="T1w SE tra" + (" head" if skull else ""),
            slope=1.0,
            intercept=0.0,
            seed=int(skull),
        )

    def test_head_skipped_brain_written(self):
        self.write(True, "head")
        self.write(False, "brain")
        records = self.runner().run()
        by_desc = {r.series_description: r for r in records}
        self.assertEqual(by_desc["T1w SE tra head"].status, "skipped")
        self.assertIn("a whole head with skull", by_desc["T1w SE tra head"].reason)
        self.assertEqual(by_desc["T1w SE tra"].status, "written")
        self.assert_valid(self.out / by_desc["T1w SE tra"].output_folder, by_desc["T1w SE tra"].slices)
        # the check can be turned off
        self.out = self.tmp / "out2"
        self.assertEqual({r.status for r in self.runner(max_skull_fraction=None).run()}, {"written"})


class TestExitStatus(DicomCase):
    def test_ct_only_archive_exits_non_zero_with_one_line(self):
        self.inp.mkdir()
        for f in ct5n_files():
            shutil.copy(f, self.inp / Path(f).name)
        with self.assertRaises(SynthesisError) as ctx:
            self.runner().run()
        message = str(ctx.exception)
        self.assertTrue(message.startswith("DICOM synthesis found no eligible MR series: 1 series, 0 written"), message)
        self.assertNotIn("\n", message)
        self.assertEqual([r["status"] for r in self.rows()], ["skipped"])

    def test_rerun_with_everything_written_exits_zero(self):
        write_series(self.inp, mni_brain()[:, :, 40:50:2], spacing=(2.0, 2.0, 4.0), orientation=rotation(0, 10))
        self.assertEqual(self.runner().run()[0].status, "written")
        self.assertIn("exists", self.runner().run()[0].reason)  # nothing to do, but no error


if __name__ == "__main__":
    unittest.main()
