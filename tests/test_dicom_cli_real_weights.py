"""The DICOM bundle command (``inference.json`` + ``inference_dicom.json`` through ``python -m monai.bundle run``)
with the shipped weights ``bundle/models/model.pt`` writes the synthesis the NIfTI path gives for the same volume,
and it is a synthesis: inside the head it differs from the source and lies in the target range."""

from __future__ import annotations

import json
import os
import subprocess
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigWorkflow

from custom.data import load_mni152
from tests.test_dicom_fixtures import write_series

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
WEIGHTS = ROOT / "bundle" / "models" / "model.pt"
MR_RANGE = (0.0, 1000.0)  # ModalityDenormalize's default mr_range: the target's grey levels


def head_block() -> np.ndarray:
    """64 x 72 x 12 voxels of the 2 mm MNI152 T1 template through the brain: the smallest series the DICOM
    eligibility checks accept (64 rows and columns, 128 mm field of view) at the inference spacing."""
    template, _ = load_mni152("t1", resolution=2)  # (99, 117, 95)
    block = np.asarray(template[18:82, 22:94, 40:52], dtype=np.float32)
    return block / block.max() * 900.0


def real_values(ds: pydicom.Dataset) -> np.ndarray:
    """An MR slice's synthesised values (columns, rows): stored values through its RealWorldValueMapping."""
    (mapping,) = ds.RealWorldValueMappingSequence
    return ds.pixel_array.T * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)


def series_values(folder: Path) -> np.ndarray:
    """The written series as (columns, rows, slices), slices in ascending position along the slice normal."""
    slices = [pydicom.dcmread(path) for path in folder.iterdir()]
    normal = np.cross(*np.reshape(slices[0].ImageOrientationPatient, (2, 3)).astype(float))
    slices.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    return np.stack([real_values(ds) for ds in slices], -1)


@pytest.mark.slow
def test_dicom_command_with_shipped_weights_matches_the_nifti_path(tmp_path):
    source = head_block()
    write_series(
        tmp_path / "in" / "t1",
        source,
        spacing=(2.0, 2.0, 2.0),
        orientation=np.eye(3),
        slope=1.0,
        intercept=0.0,
        description="T1w",
    )
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps([str(CONFIGS / "inference.json"), str(CONFIGS / "inference_dicom.json")]),
        "--input_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(WEIGHTS),
        "--save_nifti",
        "true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "out" / "report.json").read_text())["series"]
    assert row["status"] == "written", row
    dicom = series_values(tmp_path / "out" / row["output_folder"])
    assert dicom.shape == source.shape

    # the NIfTI path on the source the DICOM run read (its own NIfTI copy, same grid), in-process
    (nifti_source,) = (tmp_path / "out" / "nifti").glob("*_source.nii.gz")
    (tmp_path / "nifti_in").mkdir()
    shutil.copy(nifti_source, tmp_path / "nifti_in" / "t1.nii.gz")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        dataset_dir=str(tmp_path / "nifti_in"),
        output_dir=str(tmp_path / "nifti_path"),
        ckpt_path=str(WEIGHTS),
    )
    workflow.initialize()
    workflow.run()
    (nifti,) = (tmp_path / "nifti_path").glob("*_synth.nii.gz")
    via_nifti = nib.load(str(nifti)).get_fdata()
    assert via_nifti.shape == dicom.shape
    print(
        f"\nDICOM vs NIfTI path: correlation {np.corrcoef(dicom.ravel(), via_nifti.ravel())[0, 1]:.4f}, "
        f"largest difference {np.abs(dicom - via_nifti).max():.2f}"
    )
    assert np.corrcoef(dicom.ravel(), via_nifti.ravel())[0, 1] > 0.99 and np.abs(dicom - via_nifti).max() < 1.0

    head = source > 0.1 * source.max()
    assert MR_RANGE[0] - 0.1 <= dicom[head].min() and dicom[head].max() <= MR_RANGE[1] + 0.1
    print(
        f"inside the head: synthesis {dicom[head].min():.1f}..{dicom[head].max():.1f}, correlation with the source "
        f"{np.corrcoef(dicom[head], source[head])[0, 1]:.3f}"
    )
    assert np.corrcoef(dicom[head], source[head])[0, 1] < 0.9, "inside the head the synthesis is not the source"
