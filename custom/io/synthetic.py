"""A synthetic DICOM series writer: a volume as the files a scanner archive holds, for the tests and benchmarks of the
DICOM batch (``custom.io.DicomBatchSynthesis``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset, Sequence as DicomSequence
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["PATIENT_NAME", "PATIENT_ID", "BIRTH_DATE", "write_dicom_series"]

#: the fictitious patient of the written series
PATIENT_NAME = "TESTPATIENT^ZEPHYRINE"
PATIENT_ID = "PID-8675309"
BIRTH_DATE = "19610423"


def write_dicom_series(
    folder: str | os.PathLike,
    volume: np.ndarray,
    *,
    spacing=(1.2, 1.1, 2.5),
    orientation: np.ndarray | None = None,
    origin=(-30.0, -40.0, -20.0),
    modality: str = "MR",
    slope: float = 0.5,
    intercept: float = -10.0,
    per_slice_slope: bool = False,
    description: str = "T1w MPRAGE",
    series_uid: str | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1111",
    frame_uid: str = "1.2.826.0.1.3680043.8.498.2222",
    series_number: int = 3,
    shuffle: bool = True,
    drop_slice: int | None = None,
    multiframe: bool = False,
    patient_name: str = PATIENT_NAME,
    patient_id: str = PATIENT_ID,
    birth_date: str = BIRTH_DATE,
    seed: int = 0,
) -> dict:
    """Write ``volume`` (columns, rows, slices) as a synthetic MR or CT DICOM series, one file per slice (or one
    Enhanced multi-frame file), with full geometry, as archives hold them: random file names without suffix,
    shuffled order on disk, InstanceNumber unrelated to position, rescale slope/intercept, a fictitious patient.
    For tests, benchmarks and demos of the DICOM batch; not for clinical use.

    Args:
        folder: where the files go (created).
        volume: real values, (columns, rows, slices).
        spacing: (column spacing along a row, row spacing, slice spacing) in mm.
        orientation: 3x3 whose columns are the row direction, column direction and slice normal (LPS); None: axial.
        origin: position (LPS, mm) of the first voxel of the first slice.
        modality: ``"MR"`` or ``"CT"``.
        slope, intercept: rescale of the stored int16 values; ``per_slice_slope`` varies the slope along slices.
        description, series_uid, study_uid, frame_uid, series_number: the series' identity (a new series UID
            when None).
        patient_name, patient_id, birth_date: the fictitious patient.
        shuffle: write the slices in random order.
        drop_slice: index of a slice to leave out (a gap in the geometry), or None.
        multiframe: one Enhanced MR/CT multi-frame file instead of one file per slice.
        seed: seed of the file names and the shuffle.

    Returns:
        dict with ``files``, ``series_uid``, ``sop_uids`` (slice order), ``values`` (the real values the files
        represent, (columns, rows, slices)), ``affine_lps`` (4×4) and ``folder``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if orientation is None else np.asarray(orientation, np.float64)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    cols, rows, n = volume.shape
    series_uid = series_uid or generate_uid()
    slopes = (slope * (1 + 0.25 * np.arange(n) / n)) if per_slice_slope else np.full(n, slope)
    stored = np.stack([np.rint((volume[:, :, k] - intercept) / slopes[k]) for k in range(n)], axis=-1)
    stored = np.clip(stored, -32768, 32767).astype(np.int16)
    values = np.stack([stored[:, :, k] * slopes[k] + intercept for k in range(n)], axis=-1).astype(np.float32)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = row_dir * spacing[0], col_dir * spacing[1], normal * spacing[2]
    affine[:3, 3] = origin
    sop_class = {"MR": pydicom.uid.MRImageStorage, "CT": pydicom.uid.CTImageStorage}[modality]
    if multiframe:
        sop_class = {"MR": pydicom.uid.EnhancedMRImageStorage, "CT": pydicom.uid.EnhancedCTImageStorage}[modality]

    def base() -> Dataset:
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, birth_date, "F"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, "20240102", "101010", "S1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC42", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.Modality, ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = modality, frame_uid, ""
        ds.PatientPosition = "HFS"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        return ds

    def save(ds: Dataset, path: Path) -> None:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)

    iop = [float(x) for x in (*row_dir, *col_dir)]
    keep = [k for k in range(n) if k != drop_slice]
    sop_uids = [generate_uid() for _ in range(n)]
    files = []
    if multiframe:
        ds = base()
        ds.SOPInstanceUID = sop_uids[0]
        ds.NumberOfFrames = len(keep)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        shared = Dataset()
        po, pm, pvt = Dataset(), Dataset(), Dataset()
        po.ImageOrientationPatient = iop
        pm.PixelSpacing, pm.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
        shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = DicomSequence([po]), DicomSequence([pm])
        shared.PixelValueTransformationSequence = DicomSequence([pvt])
        ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
        frame_order = list(rng.permutation(keep)) if shuffle else keep
        per = []
        for k in frame_order:
            item, pp = Dataset(), Dataset()
            pp.ImagePositionPatient = [float(x) for x in affine[:3, 3] + k * affine[:3, 2]]
            item.PlanePositionSequence = DicomSequence([pp])
            per.append(item)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(per)
        ds.PixelData = np.stack([stored[:, :, k].T for k in frame_order]).astype(np.int16).tobytes()
        path = folder / f"enh{rng.integers(1e9)}"
        save(ds, path)
        files.append(str(path))
    else:
        order = list(rng.permutation(keep)) if shuffle else keep
        for write_idx, k in enumerate(order):
            ds = base()
            ds.SOPInstanceUID = sop_uids[k]
            ds.InstanceNumber = write_idx + 1  # deliberately unrelated to position
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.ImagePositionPatient = [float(x) for x in affine[:3, 3] + k * affine[:3, 2]]
            ds.ImageOrientationPatient = iop
            ds.PixelSpacing = [spacing[1], spacing[0]]
            ds.SliceThickness = spacing[2]
            ds.RescaleSlope, ds.RescaleIntercept = float(slopes[k]), intercept
            if modality == "CT":
                ds.RescaleType = "HU"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            path = folder / f"{rng.integers(1e9):09d}"  # no suffix, random name
            save(ds, path)
            files.append(str(path))
    return {
        "files": files,
        "series_uid": series_uid,
        "sop_uids": sop_uids,
        "values": values,
        "affine_lps": affine,
        "folder": folder,
    }
