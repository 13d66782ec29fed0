"""Which inputs the model can take: one brain-only (skull-stripped) magnitude volume of anatomy.

Each check returns why an input is not eligible, or ``None``; a batch run reports such inputs as *skipped* with
that reason (not as failed). Header checks (:func:`series_problem`) need only the few elements discovery reads;
:func:`field_of_view_problem` needs the series geometry; :func:`head_problem` needs the pixels and works on any
volume, DICOM or NIfTI.

Thresholds (named constants, overridable by the callers' arguments):

- :data:`MIN_MATRIX` = 64 rows and columns: the coarsest matrix of clinical brain series (EPI at 3.5-4 mm over
  a 220-256 mm field); 16x16 or 32x32 images are localizers and calibration scans.
- :data:`MIN_FOV_MM` = 100 mm in-plane: an adult brain is about 140 mm wide and 170 mm long, so a smaller field of
  view (e.g. 20 mm) shows a detail, not a brain.
- No minimum slice count: a single slice or a thin slab is synthesised slice by slice in its acquisition plane
  (:data:`THIN_SLAB_SLICES`, see :class:`~custom.io.DicomBatchSynthesis`).
- :data:`MAX_SKULL_FRACTION` = 0.09, for :func:`skull_shell_fraction` (how it was measured is said there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset
from scipy import ndimage as ndi

from .geometry import SeriesGeometry

__all__ = [
    "EXCLUDED_IMAGE_TYPES",
    "MIN_MATRIX",
    "MIN_FOV_MM",
    "THIN_SLAB_SLICES",
    "MAX_SKULL_FRACTION",
    "series_problem",
    "field_of_view_problem",
    "skull_shell_fraction",
    "head_problem",
]

#: ImageType values (any of the values) of images that are not one magnitude volume of anatomy: Siemens
#: MOSAIC (an EPI volume tiled into one image), phase images and maps (Siemens ``P``, ``PHASE``, ``PHASE MAP``),
#: projections (``PROJECTION IMAGE``, ``MIP``) and localizers.
EXCLUDED_IMAGE_TYPES = frozenset({"MOSAIC", "P", "PHASE", "PHASE MAP", "PROJECTION IMAGE", "MIP", "LOCALIZER"})
#: ... and values starting so: Siemens MIP_SAG / MIP_COR / MIP_TRA, Philips phase images P_FFE / P_SE.
_EXCLUDED_PREFIXES = ("MIP_", "P_")
MIN_MATRIX = 64
MIN_FOV_MM = 100.0
#: Sources with fewer slices are sliced along their own acquisition plane (a slab has no other usable plane).
THIN_SLAB_SLICES = 8
MAX_SKULL_FRACTION = 0.09

_ORIENTATION_ATOL = 1e-3  # direction cosines, as the series geometry
_POSITION_ATOL = 1e-2  # mm, as the series geometry
_DARK = 0.25  # "no signal": below this fraction of the 1st..99th percentile range, above the 1st percentile
_SHELL_MM = (3.0, 15.0)  # depth below the outline where a skull lies under the scalp (scalp 3-8 mm, skull 4-10 mm)
_SHELL_SLICES = 32  # slices looked at, evenly spread (the fraction is a volume average; this bounds the cost)


def _image_type_problem(headers: Sequence[Dataset]) -> str | None:
    values = {str(v).strip().upper() for h in headers for v in (h.get("ImageType") or [])}
    excluded = sorted(v for v in values if v in EXCLUDED_IMAGE_TYPES or v.startswith(_EXCLUDED_PREFIXES))
    if excluded:
        kinds = "mosaic, phase, projection or localizer"
        return f"ImageType {'/'.join(excluded)}: not a magnitude volume of anatomy ({kinds})"
    if any(str(h.get("ComplexImageComponent", "")).upper() == "PHASE" for h in headers):  # Enhanced MR
        return "ComplexImageComponent PHASE: not a magnitude image"
    return None


def _stack_problem(headers: Sequence[Dataset]) -> str | None:
    """Several orientations (a tri-plane localizer) or several images per slice position (echoes, time points,
    diffusion directions): not one volume. Single-frame instances only, one per SOPInstanceUID (a duplicate copy
    of an instance is not a second image)."""
    unique = {str(h.get("SOPInstanceUID", id(h))): h for h in headers if "ImagePositionPatient" in h}
    try:
        orientation = np.array([[float(x) for x in h.ImageOrientationPatient] for h in unique.values()])
        position = np.array([[float(x) for x in h.ImagePositionPatient] for h in unique.values()])
    except (AttributeError, TypeError, ValueError):  # missing or malformed: the series geometry says what is wrong
        return None
    if len(unique) < 2 or orientation.shape[1:] != (6,) or position.shape[1:] != (3,):
        return None
    planes = []
    for o in orientation:
        if not any(np.allclose(o, p, atol=_ORIENTATION_ATOL) for p in planes):
            planes.append(o)
    if len(planes) > 1:
        return f"{len(planes)} slice orientations (a tri-plane localizer or several stacks): not one volume"
    normal = np.cross(planes[0][:3], planes[0][3:])
    distinct = 1 + int(np.count_nonzero(np.diff(np.sort(position @ normal)) >= _POSITION_ATOL))
    if distinct < len(unique):
        return (
            f"{len(unique)} images at {distinct} slice positions (echoes, time points or diffusion directions): "
            "not one volume"
        )
    return None


def series_problem(headers: Sequence[Dataset], min_matrix: int = MIN_MATRIX) -> str | None:
    """Why the series with these headers is not eligible, from its headers alone: ImageType
    (:data:`EXCLUDED_IMAGE_TYPES`), Enhanced MR phase, several orientations or several images per slice position,
    or a matrix smaller than ``min_matrix`` rows or columns. ``None`` when eligible so far.

    Args:
        headers: the datasets of the series' files; ImageType, ComplexImageComponent, Rows, Columns,
            SOPInstanceUID, ImageOrientationPatient and ImagePositionPatient are read.
        min_matrix: the smallest number of rows and of columns.
    """
    if reason := _image_type_problem(headers) or _stack_problem(headers):
        return reason
    try:
        rows, cols = (
            min(int(h.get("Rows", 0) or 0) for h in headers),
            min(int(h.get("Columns", 0) or 0) for h in headers),
        )
    except (TypeError, ValueError):
        return None  # the series geometry says what is wrong
    if min(rows, cols) < min_matrix:
        return f"matrix {rows}x{cols} is smaller than {min_matrix}x{min_matrix}: a localizer or calibration scan"
    return None


def field_of_view_problem(geom: SeriesGeometry, min_fov_mm: float = MIN_FOV_MM) -> str | None:
    """Why a series with this geometry is not a brain image: an in-plane field of view under ``min_fov_mm``."""
    cols, rows, _ = geom.shape
    spacing = geom.frames[0].pixel_spacing  # (row spacing, column spacing)
    width, height = cols * spacing[1], rows * spacing[0]
    if min(width, height) < min_fov_mm:
        return f"field of view {width:.0f}x{height:.0f} mm is smaller than {min_fov_mm:g} mm: not a whole brain"
    return None


def skull_shell_fraction(volume: np.ndarray, spacing: Sequence[float], slice_axis: int = 2) -> float:
    """How much of the layer under the outer surface is signal-free: about 0 for a skull-stripped brain, the skull
    for a whole head.

    Bone gives no MR signal, and on a head the skull lies under a few mm of scalp; a skull-stripped brain has
    cortex there. In each slice (planes across ``slice_axis``, at most 32 of them, evenly spread) the outline is
    the region with signal, enclosed signal-free parts filled in (the skull between scalp and brain); the result
    is the signal-free fraction of the band 3-15 mm inside that outline. "Signal-free" is below 25 % of the
    1st-99th percentile range above the 1st percentile. Borders of the image are not an outline, so a crop inside
    the brain gives 0. MR only: bone is bright in CT.

    Measured with heads built as ``tests/test_dicom_eligibility.py`` builds them (the MNI ICBM152 brain inside
    literature layers of CSF, skull -- inner table, marrow, outer table, 4-10 mm -- and scalp; T1w, T2w, PD and
    FLAIR by the demo simulation's signal equation; 1 and 2 mm voxels; 1.5 and 4 % Rician noise): 0.11-0.47 per
    volume, 0.10 or more in every central axial, coronal and sagittal slice (the least: PD, 4 mm skull, 2 mm
    voxels). Skull-stripped brains (the same phantoms without skull, the MNI template T1, the demo data's T1w and
    T2w with lesions and noise, the DICOM fixtures' crop): 0.006 or less per volume; central slices 0.03 or less
    but FLAIR's midsagittal one, whose medial sulci are enclosed CSF (up to 0.074 at 2 mm). Hence
    :data:`MAX_SKULL_FRACTION` = 0.09. Missed on purpose: heads whose scalp is cut off by the field of view or
    shows no signal (fat-suppressed), which leave the skull outside the outline.

    Args:
        volume: 3-D array of intensities.
        spacing: voxel size (mm) along the three axes.
        slice_axis: the axis across the slices (the acquisition's slice normal where known).

    Example::

        skull_shell_fraction(nifti.get_fdata(), nifti.header.get_zooms()[:3])  # > 0.09: a head with skull
    """
    if np.ndim(volume) != 3:
        raise ValueError(f"volume must be 3-D, got shape {np.shape(volume)}.")
    v = np.moveaxis(np.asarray(volume, dtype=np.float32), slice_axis, -1)
    in_plane = [float(s) for k, s in enumerate(spacing) if k != slice_axis % 3]
    v = v[..., np.unique(np.linspace(0, v.shape[-1] - 1, min(_SHELL_SLICES, v.shape[-1])).round().astype(int))]
    lo, hi = np.percentile(v, (1, 99))
    if not hi > lo:
        return 0.0
    dark = v < lo + _DARK * (hi - lo)
    shell = band = 0
    for k in range(v.shape[-1]):
        outline = np.pad(ndi.binary_fill_holes(~dark[..., k]), 1, mode="edge")  # the image border is not an edge
        if outline.all():
            continue
        depth = ndi.distance_transform_edt(outline, sampling=in_plane)[1:-1, 1:-1]
        layer = (depth > _SHELL_MM[0]) & (depth <= _SHELL_MM[1])
        shell += np.count_nonzero(layer & dark[..., k])
        band += np.count_nonzero(layer)
    return shell / band if band else 0.0


def head_problem(
    volume: np.ndarray, spacing: Sequence[float], slice_axis: int = 2, max_fraction: float = MAX_SKULL_FRACTION
) -> str | None:
    """Why ``volume`` is not eligible as a brain-only image: a :func:`skull_shell_fraction` over ``max_fraction``
    (a whole head with skull and scalp, which the model, trained on skull-stripped brains, turns into a bright
    blocky head). Arguments as :func:`skull_shell_fraction`."""
    fraction = skull_shell_fraction(volume, spacing, slice_axis)
    if fraction > max_fraction:
        return (
            f"a whole head with skull (signal-free shell {fraction:.2f} > {max_fraction:g} under the outline): "
            "the model takes brain-only (skull-stripped) images; extract the brain first"
        )
    return None
