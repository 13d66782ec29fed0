"""`monai.bundle run` with inference.json + inference_dicom.json, stand-in network, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import pytest
import torch

from tests.test_dicom_fixtures import PATIENT_ID, PATIENT_NAME, mni_volume, write_series

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


@pytest.mark.slow
@unittest.skipUnless((CONFIGS / "inference.json").is_file(), "bundle/configs/inference.json not written yet")
class TestDicomBundleRun(unittest.TestCase):
    def test_run_writes_series_report_and_exits_nonzero_on_failure(self):
        tmp = Path(tempfile.mkdtemp())
        try:
            write_series(tmp / "in" / "a", mni_volume(), description="T1w")
            write_series(tmp / "in" / "b", mni_volume(), drop_slice=3, description="T1w gap", seed=5)
            torch.save({}, tmp / "empty.pt")  # the stand-in has no weights
            configs = [str(CONFIGS / "inference.json"), str(CONFIGS / "inference_dicom.json")]
            cmd = [
                sys.executable,
                "-m",
                "monai.bundle",
                "run",
                "--config_file",
                json.dumps(configs),
                "--input_dir",
                str(tmp / "in"),
                "--output_dir",
                str(tmp / "out"),
                "--network_def",
                "$torch.nn.Identity()",
                "--ckpt_path",
                str(tmp / "empty.pt"),
                # the fixtures are a 24x28 crop, a 29 mm field of view: under the limits for real data
                "--dicom_synthesis#min_matrix",
                "16",
                "--dicom_synthesis#min_fov_mm",
                "20",
            ]
            proc = subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}
            )
            self.assertEqual(proc.returncode, 1, proc.stderr[-3000:])
            self.assertNotIn("Traceback", proc.stderr)
            last = proc.stderr.strip().splitlines()[-1]  # the excepthook's one line: <ErrorType>: <message>
            self.assertTrue(last.startswith("SynthesisError: DICOM synthesis: 2 series, 1 written"), last)
            report = json.loads((tmp / "out" / "report.json").read_text())
            status = {r["series_description"]: r["status"] for r in report["series"]}
            self.assertEqual(status, {"T1w": "written", "T1w gap": "failed"})
            written = [r for r in report["series"] if r["status"] == "written"][0]
            self.assertEqual(len(list((tmp / "out" / written["output_folder"]).iterdir())), mni_volume().shape[2])
            for text in (proc.stdout, proc.stderr, (tmp / "out" / "report.csv").read_text()):
                self.assertNotIn(PATIENT_ID, text)
                self.assertNotIn(PATIENT_NAME, text)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
