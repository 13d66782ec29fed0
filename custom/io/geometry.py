"""Slice geometry of one DICOM series: frames, sort order along the slice normal, validation, affine.

Shared by the reader (which stacks pixels in this order) and the writer (which writes one derived slice per
source frame in the same order), so the two can never disagree about which slice is which.

Conventions follow MONAI's DICOM readers with ``swap_ij=True``: voxel axis 0 runs along the DICOM row direction
(the first three values of ImageOrientationPatient, i.e. along a row, across columns), axis 1 along the column
direction, axis 2 along the slice normal ``row × col`` in increasing position. The affine built here is in the
DICOM patient space (LPS); readers convert it to RAS with ``monai.data.utils.orientation_ras_lps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom import uid as dcm_uid

__all__ = [
    "DicomSeriesError",
    "DicomFrame",
    "SeriesGeometry",
    "IMAGE_SOP_CLASSES",
    "MULTIFRAME_SOP_CLASSES",
    "series_label",
    "frames_of",
    "series_geometry",
    "acquisition_axis",
]

#: SOP classes whose pixels are a scalar cross-sectional image the bundle can synthesise from.
MULTIFRAME_SOP_CLASSES = frozenset(
    {
        dcm_uid.EnhancedMRImageStorage,
        dcm_uid.EnhancedCTImageStorage,
        dcm_uid.LegacyConvertedEnhancedMRImageStorage,
        dcm_uid.LegacyConvertedEnhancedCTImageStorage,
    }
)
IMAGE_SOP_CLASSES = frozenset({dcm_uid.MRImageStorage, dcm_uid.CTImageStorage}) | MULTIFRAME_SOP_CLASSES

# Tolerances: DS values carry at most 16 characters, many scanners round positions to 1e-2..1e-6 mm.
_ORIENTATION_TOL = 1e-3  # direction cosines
_SPACING_RTOL = 1e-3  # pixel spacing, relative
_POSITION_ATOL = 1e-2  # mm
_POSITION_RTOL = 1e-2  # of the slice spacing


class DicomSeriesError(ValueError):
    """A DICOM series that cannot be read as one regular volume; the message names the series and the file."""


def series_label(ds: Dataset | None) -> str:
    """``series <SeriesInstanceUID> ('<SeriesDescription>')`` -- how every message names a series (no patient data)."""
    if ds is None:
        return "series <unknown>"
    return f"series {ds.get('SeriesInstanceUID', '<no SeriesInstanceUID>')} ({str(ds.get('SeriesDescription', ''))!r})"


@dataclass
class DicomFrame:
    """One 2-D frame of a series: a single-frame instance, or one frame of a multi-frame instance."""

    dataset: Dataset
    filename: str
    frame_index: int | None  # 0-based frame of a multi-frame instance, None for single-frame
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    pixel_spacing: np.ndarray  # (row spacing, column spacing) mm
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None

    @property
    def where(self) -> str:
        return self.filename if self.frame_index is None else f"{self.filename} frame {self.frame_index + 1}"


@dataclass
class SeriesGeometry:
    """Frames sorted along the slice normal and the voxel-to-LPS affine of the stacked volume."""

    frames: list[DicomFrame]
    affine_lps: np.ndarray
    shape: tuple[int, int, int]  # (columns, rows, slices) -- MONAI's swap_ij order
    label: str = ""
    slice_spacing: float = field(default=1.0)


def _item(seq_owner: Dataset, name: str) -> Dataset | None:
    seq = seq_owner.get(name)
    return seq[0] if seq else None


def _functional(ds: Dataset, per_frame: Dataset | None, seq_name: str) -> Dataset | None:
    """The first item of a functional group macro, per-frame taking precedence over shared."""
    if per_frame is not None and (it := _item(per_frame, seq_name)) is not None:
        return it
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    return _item(shared, seq_name) if shared is not None else None


def _floats(value, n: int, what: str, where: str, label: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DicomSeriesError(f"{label}: {where}: {what} is not numeric ({e})") from e
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DicomSeriesError(f"{label}: {where}: {what} must be {n} finite numbers, got {list(value)}")
    return arr


def _optional_float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def frames_of(ds: Dataset, filename: str, label: str | None = None) -> list[DicomFrame]:
    """The frames of one instance with their geometry and rescale, single- or multi-frame (Enhanced MR/CT)."""
    label = label or series_label(ds)
    sop = ds.get("SOPClassUID", "")
    if sop not in IMAGE_SOP_CLASSES:
        name = getattr(sop, "name", sop) or "<no SOPClassUID>"
        raise DicomSeriesError(f"{label}: {filename}: SOP class {name} is not a supported MR/CT image")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSeriesError(f"{label}: {filename}: colour images (SamplesPerPixel != 1) are not supported")
    for tag in ("Rows", "Columns"):
        if tag not in ds:
            raise DicomSeriesError(f"{label}: {filename}: {tag} is missing")
    rows, cols = int(ds.Rows), int(ds.Columns)

    if sop in MULTIFRAME_SOP_CLASSES:
        n = int(ds.get("NumberOfFrames", 1) or 1)
        per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence") or []
        if per_frame_seq and len(per_frame_seq) != n:
            raise DicomSeriesError(
                f"{label}: {filename}: {len(per_frame_seq)} per-frame functional groups for {n} frames"
            )
        frames = []
        for i in range(n):
            pf = per_frame_seq[i] if per_frame_seq else None
            where = f"{filename} frame {i + 1}"
            pos, ori, meas = (
                _functional(ds, pf, s)
                for s in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence")
            )
            if pos is None or "ImagePositionPatient" not in pos:
                raise DicomSeriesError(f"{label}: {where}: ImagePositionPatient (Plane Position) is missing")
            if ori is None or "ImageOrientationPatient" not in ori:
                raise DicomSeriesError(f"{label}: {where}: ImageOrientationPatient (Plane Orientation) is missing")
            if meas is None or "PixelSpacing" not in meas:
                raise DicomSeriesError(f"{label}: {where}: PixelSpacing (Pixel Measures) is missing")
            pvt = _functional(ds, pf, "PixelValueTransformationSequence")
            frames.append(
                DicomFrame(
                    dataset=ds,
                    filename=filename,
                    frame_index=i,
                    position=_floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", where, label),
                    orientation=_floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", where, label),
                    pixel_spacing=_floats(meas.PixelSpacing, 2, "PixelSpacing", where, label),
                    rows=rows,
                    columns=cols,
                    slope=float(pvt.get("RescaleSlope", 1.0) if pvt is not None else 1.0),
                    intercept=float(pvt.get("RescaleIntercept", 0.0) if pvt is not None else 0.0),
                    slice_thickness=_optional_float(meas.get("SliceThickness")),
                    spacing_between_slices=_optional_float(meas.get("SpacingBetweenSlices")),
                )
            )
        return frames

    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            raise DicomSeriesError(f"{label}: {filename}: {tag} is missing")
    return [
        DicomFrame(
            dataset=ds,
            filename=filename,
            frame_index=None,
            position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", filename, label),
            orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", filename, label),
            pixel_spacing=_floats(ds.PixelSpacing, 2, "PixelSpacing", filename, label),
            rows=rows,
            columns=cols,
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            slice_thickness=_optional_float(ds.get("SliceThickness")),
            spacing_between_slices=_optional_float(ds.get("SpacingBetweenSlices")),
        )
    ]


def series_geometry(datasets: Sequence[Dataset], filenames: Sequence[str]) -> SeriesGeometry:
    """Validate a series and sort its frames by position along the slice normal.

    Raises:
        DicomSeriesError: naming the series, the offending file and the problem, when instances belong to
            different series, mix SOP classes, orientations, pixel spacings or sizes, repeat a position, leave
            a gap (missing slice), or are not evenly spaced on a line.
    """
    if len(datasets) == 0:
        raise DicomSeriesError("series <unknown>: no DICOM instances given")
    if len(datasets) != len(filenames):
        raise ValueError("datasets and filenames must have the same length.")
    first = datasets[0]
    label = series_label(first)
    uid = first.get("SeriesInstanceUID")
    frames: list[DicomFrame] = []
    for ds, fn in zip(datasets, filenames):
        if ds.get("SeriesInstanceUID") != uid:
            raise DicomSeriesError(f"{label}: {fn}: belongs to another series ({ds.get('SeriesInstanceUID')})")
        if ds.get("SOPClassUID") != first.get("SOPClassUID"):
            raise DicomSeriesError(f"{label}: {fn}: SOP class differs from the rest of the series")
        frames.extend(frames_of(ds, str(fn), label))
    if len(frames) > 1 and any(f.frame_index is not None for f in frames) and len(datasets) > 1:
        raise DicomSeriesError(f"{label}: several multi-frame instances in one series are not supported")

    ref = frames[0]
    for f in frames[1:]:
        if not np.allclose(f.orientation, ref.orientation, atol=_ORIENTATION_TOL):
            raise DicomSeriesError(
                f"{label}: {f.where}: inconsistent ImageOrientationPatient {f.orientation.round(5).tolist()} "
                f"(first slice {ref.orientation.round(5).tolist()})"
            )
        if not np.allclose(f.pixel_spacing, ref.pixel_spacing, rtol=_SPACING_RTOL, atol=0):
            raise DicomSeriesError(
                f"{label}: {f.where}: inconsistent PixelSpacing {f.pixel_spacing.tolist()} "
                f"(first slice {ref.pixel_spacing.tolist()})"
            )
        if (f.rows, f.columns) != (ref.rows, ref.columns):
            raise DicomSeriesError(
                f"{label}: {f.where}: mixed image sizes {f.rows}x{f.columns} and {ref.rows}x{ref.columns}"
            )

    row_dir, col_dir = ref.orientation[:3], ref.orientation[3:]
    if (
        abs(np.linalg.norm(row_dir) - 1) > 1e-2
        or abs(np.linalg.norm(col_dir) - 1) > 1e-2
        or abs(row_dir @ col_dir) > 1e-2
    ):
        raise DicomSeriesError(f"{label}: {ref.where}: ImageOrientationPatient is not two orthonormal vectors")
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    dist = np.array([f.position @ normal for f in frames])
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    dist = dist[order]
    n = len(frames)
    if n > 1:
        diffs = np.diff(dist)
        if diffs.min() < _POSITION_ATOL:
            k = int(np.argmin(diffs))
            raise DicomSeriesError(
                f"{label}: {frames[k + 1].where}: repeats the slice position of {frames[k].where} "
                "(multi-echo, temporal or multi-stack series are not supported)"
            )
        step = float(np.median(diffs))
        tol = _POSITION_ATOL + _POSITION_RTOL * step
        big = np.nonzero(diffs > step + tol)[0]
        if big.size:
            k = int(big[0])
            missing = int(round(diffs[k] / step)) - 1
            kind = f"{missing} missing slice(s)" if missing >= 1 else "inconsistent slice spacing"
            raise DicomSeriesError(
                f"{label}: {kind}: gap of {diffs[k]:.4g} mm between {frames[k].where} and {frames[k + 1].where} "
                f"(slice spacing {step:.4g} mm)"
            )
        if np.abs(diffs - step).max() > tol:
            k = int(np.argmax(np.abs(diffs - step)))
            raise DicomSeriesError(
                f"{label}: inconsistent slice spacing: {diffs[k]:.4g} mm between {frames[k].where} and "
                f"{frames[k + 1].where} (median {step:.4g} mm)"
            )
        step_vec = (frames[-1].position - frames[0].position) / (n - 1)
        expected = frames[0].position + np.arange(n)[:, None] * step_vec
        off = np.linalg.norm(np.stack([f.position for f in frames]) - expected, axis=1)
        if off.max() > tol:
            k = int(np.argmax(off))
            raise DicomSeriesError(
                f"{label}: {frames[k].where}: ImagePositionPatient is {off[k]:.3g} mm off the line through the "
                "other slices"
            )
        spacing = step
    else:
        spacing = ref.spacing_between_slices or ref.slice_thickness or 1.0
        step_vec = normal * spacing

    affine = np.eye(4)
    affine[:3, 0] = row_dir * ref.pixel_spacing[1]  # along a row: column spacing
    affine[:3, 1] = col_dir * ref.pixel_spacing[0]  # down a column: row spacing
    affine[:3, 2] = step_vec
    affine[:3, 3] = frames[0].position
    return SeriesGeometry(
        frames=frames, affine_lps=affine, shape=(ref.columns, ref.rows, n), label=label, slice_spacing=spacing
    )


def acquisition_axis(affine: np.ndarray, source_affine: np.ndarray) -> int:
    """The voxel axis of an image with ``affine`` that runs closest to the slice normal of its source, whose
    ``source_affine`` stacks slices along voxel axis 2 (as this module's and the reader's do); both affines in one
    space. Where the source's slices lie after reorientation, e.g. axis 0 (R-L) for sagittal slices in RAS."""
    affine, source = np.asarray(affine, np.float64)[:3, :3], np.asarray(source_affine, np.float64)[:3, :3]
    normal = source[:, 2] / np.linalg.norm(source[:, 2])
    return int(np.argmax(np.abs(normal @ (affine / np.linalg.norm(affine, axis=0)))))
