"""Write a synthesised volume as a derived DICOM series in the source series' study.

The new series keeps the Patient and Study module values and the FrameOfReferenceUID of the source, gets new
Series/SOP Instance UIDs, ImageType ``DERIVED\\SECONDARY\\OTHER`` (MR) or ``...\\AXIAL`` (CT), a SeriesDescription
that says it is synthetic and not for diagnostic use, a SourceImageSequence per slice and a DerivationDescription
naming the source series, Laterality empty (unknown) when the source names neither it nor the body part, and one
slice per source frame with the source frame's ImagePositionPatient, ImageOrientationPatient, PixelSpacing and
SliceThickness. Pixels are 16-bit with one slope/intercept for the whole series, chosen so the synthesis is
represented to within half a slope step. CT targets are written as CT Image Storage with that slope/intercept as
RescaleSlope/RescaleIntercept (RescaleType HU) and the window in HU. MR targets are written as MR Image Storage
without a Modality LUT, which the MR IOD does not have and MR viewers ignore: the window is in stored units and the
slope/intercept to the synthesis's (arbitrary) units is a RealWorldValueMappingSequence.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys
from pydicom import Dataset, Sequence as DicomSequence
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from .geometry import DicomSeriesError, series_geometry

__all__ = ["DicomSeriesWriter", "choose_rescale", "PATIENT_STUDY_TAGS"]

#: Patient, Clinical Trial Subject, General Study, Patient Study and Clinical Trial Study module attributes
#: copied unchanged from the source (type-2 ones are written empty when the source lacks them).
PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ReferencedStudySequence",
    "RequestingService",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientSexNeutered",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
#: General Series / Equipment attributes worth keeping (patient position is type 2C for MR and CT).
_SERIES_TAGS = ("PatientPosition", "BodyPartExamined", "Laterality", "AnatomicalOrientationType")

_SOP_CLASS = {"MR": MRImageStorage, "CT": CTImageStorage}
_U16_MAX = 65535


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def choose_rescale(values: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """Quantise real values to 16 bits with one RescaleSlope/RescaleIntercept.

    Integer-valued data that fits (e.g. HU) is stored exactly with slope 1; anything else uses the finest slope
    that spans the value range, with intercept 0 for non-negative data (so 0 stays 0). The slope and intercept
    returned are the values *as written* (16-character DS), so ``stored * slope + intercept`` differs from
    ``values`` by at most ``slope / 2`` (plus float32 rounding of ``values``).

    Returns:
        (stored array, slope, intercept, PixelRepresentation) -- uint16 (0) or int16 (1).
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("the synthesised image holds NaN or infinite values")
    vmin, vmax = float(v.min()), float(v.max())
    if np.array_equal(v, np.rint(v)) and vmax - vmin <= _U16_MAX:
        if vmin >= 0 and vmax <= _U16_MAX:
            return v.astype(np.uint16), 1.0, 0.0, 0
        if vmin >= -32768 and vmax <= 32767:
            return v.astype(np.int16), 1.0, 0.0, 1
        return (v - vmin).astype(np.uint16), 1.0, vmin, 0
    intercept = 0.0 if vmin >= 0 else float(_ds(vmin))
    if intercept > vmin:  # DS rounding went up: step down by one unit in the last place
        intercept = float(_ds(vmin - abs(vmin) * 1e-9 - 1e-12))
    span = vmax - intercept
    slope = float(_ds(span / (_U16_MAX - 1))) if span > 0 else 1.0  # one code of headroom for DS rounding
    stored = np.clip(np.rint((v - intercept) / slope), 0, _U16_MAX).astype(np.uint16)
    return stored, slope, intercept, 0


def _real_world_value_mapping(stored: np.ndarray, slope: float, intercept: float, pixel_rep: int) -> Dataset:
    """RealWorldValueMappingSequence item: stored value * slope + intercept = synthesised value (arbitrary unit)."""
    units = Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "[arb'U]", "UCUM", "arbitrary unit"
    item = Dataset()
    item.MeasurementUnitsCodeSequence = DicomSequence([units])
    item.LUTExplanation, item.LUTLabel = "Synthesised intensity", "SYNTHETIC"
    vr = "SS" if pixel_rep else "US"  # these two take the pixels' signedness; set explicitly (ambiguous VR)
    item.add_new("RealWorldValueFirstValueMapped", vr, int(stored.min()))
    item.add_new("RealWorldValueLastValueMapped", vr, int(stored.max()))
    item.RealWorldValueIntercept, item.RealWorldValueSlope = intercept, slope
    return item


class DicomSeriesWriter:
    """Write a volume on the source grid as a derived, synthetic DICOM series (one file per source frame).

    Args:
        target_modality: ``"MR"`` (MR Image Storage) or ``"CT"`` (CT Image Storage, RescaleType HU).
        target_description: the synthesised contrast, e.g. ``"T2w"``; goes into SeriesDescription.
        series_number_offset: SeriesNumber of the output = source SeriesNumber + this.
        software: ManufacturerModelName / SoftwareVersions of the "equipment" that made the series.

    Example::

        writer = DicomSeriesWriter(target_modality="MR", target_description="T2w")
        files = writer.write(pred, source_headers, "/out/series_folder")  # pred: MetaTensor (1, X, Y, Z)
    """

    def __init__(
        self,
        target_modality: str = "MR",
        target_description: str = "T2w",
        series_number_offset: int = 1000,
        software: str = "PHMDiff MONAI bundle",
    ):
        if target_modality not in _SOP_CLASS:
            raise ValueError(f"target_modality must be one of {sorted(_SOP_CLASS)}, got {target_modality!r}.")
        self.target_modality = target_modality
        self.target_description = str(target_description)
        self.series_number_offset = int(series_number_offset)
        self.software = software

    def series_description(self) -> str:
        return f"SYNTHETIC {self.target_description} - NOT FOR DIAGNOSTIC USE"[:64]

    def write(
        self,
        image: torch.Tensor | np.ndarray,
        source: Sequence[Dataset],
        folder: str | os.PathLike,
        source_filenames: Sequence[str] | None = None,
    ) -> list[Path]:
        """Write ``image`` as a derived series of ``source`` into ``folder`` (created; files ``IM00001.dcm``...).

        Args:
            image: (X, Y, Z) or (1, X, Y, Z) on the source grid in the reader's axis order; a MetaTensor's affine
                (RAS unless its ``space`` says LPS) is checked against the source geometry.
            source: the source series' datasets (headers without pixel data are enough), any order.
            folder: output folder.
            source_filenames: the source files, for error messages.

        Returns:
            the written files, in slice order.
        """
        names = [f"instance {i}" for i in range(len(source))] if source_filenames is None else list(source_filenames)
        geom = series_geometry(list(source), names)
        label = geom.label
        arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != geom.shape:
            raise DicomSeriesError(
                f"{label}: synthesised image shape {arr.shape} is not the source grid {geom.shape} "
                "(does postprocessing invert the preprocessing?)"
            )
        affine = getattr(image, "affine", None)
        if affine is not None and hasattr(image, "meta"):
            affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, np.float64)
            if image.meta.get(MetaKeys.SPACE, SpaceKeys.RAS) != SpaceKeys.LPS:
                affine = orientation_ras_lps(affine)
            if not np.allclose(affine, geom.affine_lps, atol=1e-3 + 1e-4 * np.abs(geom.affine_lps).max()):
                raise DicomSeriesError(
                    f"{label}: synthesised image affine does not match the source geometry "
                    "(does postprocessing invert the preprocessing?)"
                )
        stored, slope, intercept, pixel_rep = choose_rescale(arr)
        ct = self.target_modality == "CT"
        # the window applies after the Modality LUT: HU for CT, stored units for MR (which has none)
        scale, offset = (slope, intercept) if ct else (1.0, 0.0)
        p1, p99 = np.percentile(stored, [1, 99]) * scale + offset

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        src0 = geom.frames[0].dataset
        series_uid = generate_uid()
        now = datetime.datetime.now()
        date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
        derivation = (
            f"Synthetic {self.target_description} ({self.target_modality}) generated by {self.software} from "
            f"{label}; NOT FOR DIAGNOSTIC USE"
        )[:1024]
        try:
            src_number = int(src0.get("SeriesNumber", 0) or 0)
        except (TypeError, ValueError):
            src_number = 0
        real_world = None if ct else _real_world_value_mapping(stored, slope, intercept, pixel_rep)
        written = []
        for k, frame in enumerate(geom.frames):
            ds = Dataset()
            if "SpecificCharacterSet" in src0:
                ds.SpecificCharacterSet = src0.SpecificCharacterSet
            sop_uid = generate_uid()
            ds.SOPClassUID = _SOP_CLASS[self.target_modality]
            ds.SOPInstanceUID = sop_uid
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            for tag in PATIENT_STUDY_TAGS:
                if tag in src0:
                    setattr(ds, tag, src0.data_element(tag).value)
                elif tag in _TYPE2:
                    setattr(ds, tag, "")
            # General Series
            ds.Modality = self.target_modality
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = src_number + self.series_number_offset
            ds.SeriesDescription = self.series_description()
            ds.SeriesDate, ds.SeriesTime = date, time
            for tag in _SERIES_TAGS:
                if tag in src0:
                    setattr(ds, tag, src0.data_element(tag).value)
            if "Laterality" not in ds and "BodyPartExamined" not in ds:
                ds.Laterality = ""  # type 2C, needed unless the body part is known to be unpaired: empty = unknown
            if "PatientPosition" not in ds and "PatientPosition" in src0.get("SharedFunctionalGroupsSequence", [{}])[0]:
                ds.PatientPosition = src0.SharedFunctionalGroupsSequence[0].PatientPosition
            # Frame of Reference, Equipment
            ds.FrameOfReferenceUID = src0.get("FrameOfReferenceUID", "") or generate_uid()
            ds.PositionReferenceIndicator = src0.get("PositionReferenceIndicator", "")
            ds.Manufacturer = ""
            ds.ManufacturerModelName = self.software
            ds.SoftwareVersions = self.software
            # General Image
            ds.InstanceNumber = k + 1
            ds.ContentDate, ds.ContentTime = date, time
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if ct else "OTHER"]  # value 3 is type 1 in CT and MR
            ds.DerivationDescription = derivation
            ds.ImageComments = "Synthetic image - not for diagnostic use"
            ref = Dataset()
            ref.ReferencedSOPClassUID = frame.dataset.SOPClassUID
            ref.ReferencedSOPInstanceUID = frame.dataset.SOPInstanceUID
            if frame.frame_index is not None:
                ref.ReferencedFrameNumber = frame.frame_index + 1
            purpose = Dataset()
            purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
            purpose.CodeMeaning = "Source image for image processing operation"
            ref.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
            ds.SourceImageSequence = DicomSequence([ref])
            ds.BurnedInAnnotation = "NO"
            ds.LossyImageCompression = "00"
            # Image Plane
            ds.ImagePositionPatient = [_ds(x) for x in frame.position]
            ds.ImageOrientationPatient = [_ds(x) for x in frame.orientation]
            ds.PixelSpacing = [_ds(x) for x in frame.pixel_spacing]
            ds.SliceThickness = _ds(frame.slice_thickness or geom.slice_spacing)
            if self.target_modality == "MR" or frame.spacing_between_slices:
                ds.SpacingBetweenSlices = _ds(geom.slice_spacing)
            normal = np.cross(frame.orientation[:3], frame.orientation[3:])
            ds.SliceLocation = _ds(frame.position @ normal)
            # Image Pixel + Modality LUT
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = frame.rows, frame.columns
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = pixel_rep
            if ct:
                ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(intercept), _ds(slope), "HU"
            else:
                ds.RealWorldValueMappingSequence = DicomSequence([real_world])
            ds.WindowCenter = _ds((p1 + p99) / 2)
            ds.WindowWidth = _ds(max(p99 - p1, scale))
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            # modality-specific type-1/2 attributes
            if not ct:
                ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"  # research mode: no acquisition
                ds.ScanOptions, ds.MRAcquisitionType = "", ""
                ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "", "", ""
            else:
                ds.KVP, ds.AcquisitionNumber = "", ""

            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"IM{k + 1:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            written.append(path)
        return written
