"""A MONAI ``ImageReader`` for one DICOM series given as a list of files (or a folder holding one series).

Why not reuse MONAI's readers as they are (MONAI 1.6):

- ``PydicomReader`` treats a *list* of files as channels, not as a series (only a folder is stacked); it stacks
  a folder by InstanceNumber rather than by position along the slice normal, derives the slice spacing from
  the z coordinate alone (wrong for sagittal, coronal and oblique stacks), only *warns* on mixed sizes or
  spacings and never notices a missing slice, and gives Enhanced (multi-frame) MR/CT an identity affine.
- ``ITKReader`` (GDCM) sorts by position and keeps oblique geometry, but also reads a list of files as
  channels, picks one series per folder by its own rules, accepts gaps with a warning, does not read the
  per-frame geometry of Enhanced MR/CT, and its errors do not name the series.

What *is* reused: MONAI's ``ImageReader`` interface and metadata conventions (``affine``/``original_affine`` in
RAS via ``orientation_ras_lps``, ``spatial_shape``, ``original_channel_dim``, ``spacing`` via
``affine_to_spacing``, ``swap_ij`` axis order), so ``LoadImaged(keys="image", reader=DicomSeriesReader())`` and
every downstream MONAI transform (``Orientationd``, ``Spacingd``, ``Invertd``) work unchanged. The result matches
``ITKReader`` on a folder holding a regular series (tested).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.utils import affine_to_spacing, orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.pixels.utils import get_expected_length

from .geometry import DicomSeriesError, SeriesGeometry, series_geometry, series_label

__all__ = [
    "DicomSeriesReader",
    "DicomSeriesData",
    "SeriesInstances",
    "read_dicom_header",
    "read_instances",
    "pixel_data_problem",
    "is_dicomdir",
    "NO_PREAMBLE_LIMIT",
    "MAX_TAG_BYTES",
]

#: Suffixes that are certainly not DICOM, so that a Compose holding this reader still loads NIfTI etc. as before.
_NON_DICOM_SUFFIXES = (
    ".nii",
    ".nii.gz",
    ".mgz",
    ".mgh",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".img",
    ".hdr",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".npy",
    ".npz",
    ".h5",
    ".hdf5",
    ".json",
    ".csv",
    ".txt",
    ".pt",
)

#: Files without the DICOM preamble are parsed from at most this many leading bytes (headers are far smaller), so
#: a large file that merely starts like DICOM costs little to pass over.
NO_PREAMBLE_LIMIT = 1 << 20
#: With ``read_dicom_header(path, tags)``, longer values are dropped unread (a file may claim megabytes for any tag).
MAX_TAG_BYTES = 64 << 10

#: Header-only keys copied into the image metadata (no patient module values: metadata ends up in logs and files).
_META_TAGS = ("SeriesInstanceUID", "SeriesDescription", "Modality", "StudyInstanceUID", "FrameOfReferenceUID")


def is_dicomdir(path: str | os.PathLike, ds: Dataset | None = None) -> bool:
    """True for a DICOMDIR media directory (by name or by its Media Storage SOP Class)."""
    if Path(path).name.upper() == "DICOMDIR":
        return True
    meta = getattr(ds, "file_meta", None) if ds is not None else None
    return meta is not None and meta.get("MediaStorageSOPClassUID") == pydicom.uid.MediaStorageDirectoryStorage


def read_dicom_header(path: str | os.PathLike, tags: Sequence[str | int] | None = None) -> Dataset | None:
    """Header of a DICOM file without its pixel data; ``None`` for a file that is not DICOM at all.

    Only a regular file is read (a FIFO, or a link to ``/dev/zero``, is not DICOM). Files without the 128-byte
    preamble (old archives) are accepted when their first element lies in group 0002 or 0008 (where SOPClassUID
    is) and the first :data:`NO_PREAMBLE_LIMIT` bytes parse with a SOPClassUID and a SeriesInstanceUID.

    Args:
        path: the file.
        tags: keep only these elements (the rest is skipped unread) and drop any of them longer than
            :data:`MAX_TAG_BYTES`, so that the headers of a whole tree can be held at once; ``None`` keeps the
            whole header.

    Raises:
        pydicom.errors.InvalidDicomError, OSError, ...: for a file that announces DICOM but cannot be parsed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        start = fh.read(132)
        fh.seek(0)
        kw = {"stop_before_pixels": True, "specific_tags": tags, "defer_size": MAX_TAG_BYTES if tags else None}
        if start[128:132] == b"DICM":
            ds = pydicom.dcmread(fh, **kw)
        else:
            if len(start) < 8 or not {int.from_bytes(start[:2], "little"), int.from_bytes(start[:2], "big")} & {2, 8}:
                return None
            try:
                ds = pydicom.dcmread(io.BytesIO(fh.read(NO_PREAMBLE_LIMIT)), force=True, **kw)
            except Exception:
                return None
            if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
                return None
    ds.buffer = None  # pydicom keeps the file object (for a deflated file, all of it inflated) for deferred reads
    for tag in list(ds.keys()) if tags else []:
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length:  # deferred: too long to keep
            del ds[tag]
    return ds


def pixel_data_problem(ds: Dataset) -> str | None:
    """Why the pixel data of ``ds`` (read whole) are not all there, or None: no PixelData, or uncompressed data
    shorter than Rows x Columns x frames need (a truncated copy; pydicom reads it without a word). Compressed data
    are checked when decoded."""
    if "PixelData" not in ds:
        return "holds no pixel data"
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is not None and pydicom.uid.UID(syntax).is_encapsulated:
        return None
    try:
        expected = get_expected_length(ds)
    except Exception as e:  # Rows, Columns or BitsAllocated missing or malformed
        return f"pixel data cannot be sized ({e})"
    if len(ds.PixelData) < expected:
        return f"pixel data cut short ({len(ds.PixelData)} of {expected} bytes)"
    return None


@dataclass
class SeriesInstances:
    """What :func:`read_instances` returns: one readable dataset per SOP instance and what was left out."""

    datasets: list[Dataset]
    filenames: list[str]
    duplicates: list[tuple[str, str, str]]  # (file, its own problem or "", the file used for that SOP instance)
    unreadable: list[tuple[str, str]]  # (file, problem) for SOP instances of which no copy is readable


def read_instances(files: Sequence[str | os.PathLike], **kwargs) -> SeriesInstances:
    """Read the files of one series whole and keep one readable copy of each SOP instance (the first in ``files``).

    Archives hold byte copies of instances, some truncated: a further copy is left out as a duplicate, a file whose
    pixel data are cut short (:func:`pixel_data_problem`) is left out as a duplicate when another copy of its
    instance is readable and as unreadable otherwise, as is a file that cannot be parsed.

    Args:
        files: the files of one series.
        kwargs: extra arguments for ``pydicom.dcmread``.
    """
    problems: dict[str, str] = {}
    kept: dict[str, tuple[Dataset, str]] = {}
    copies: dict[str, list[str]] = {}
    for name in map(str, files):
        try:
            ds = pydicom.dcmread(name, **kwargs)
            problem = pixel_data_problem(ds)
        except Exception as e:
            ds, problem = None, f"cannot be read as DICOM ({type(e).__name__}: {e})"
        key = str(ds.get("SOPInstanceUID", "") or name) if ds is not None else name
        copies.setdefault(key, []).append(name)
        if problem:
            problems[name] = problem
        elif key not in kept:
            kept[key] = (ds, name)
    duplicates, unreadable = [], []
    for key, names in copies.items():
        used = kept[key][1] if key in kept else None
        for name in names:
            if used is None:
                unreadable.append((name, problems[name]))
            elif name != used:
                duplicates.append((name, problems.get(name, ""), used))
    return SeriesInstances([d for d, _ in kept.values()], [n for _, n in kept.values()], duplicates, unreadable)


@dataclass
class DicomSeriesData:
    """What ``DicomSeriesReader.read`` returns: the datasets of one series and their files."""

    datasets: list[Dataset]
    filenames: list[str]

    @property
    def label(self) -> str:
        return series_label(self.datasets[0]) if self.datasets else "series <unknown>"


class DicomSeriesReader(ImageReader):
    """Read one DICOM series (single-frame MR/CT slices, or one Enhanced MR/CT multi-frame instance) as a volume.

    Slices are sorted by their position along the slice normal (not by file name or InstanceNumber); each
    frame's RescaleSlope/RescaleIntercept is applied (float32 output); oblique orientations are kept in the
    affine. The series must be regular: one orientation, pixel spacing and size, distinct and evenly spaced
    positions on a line (a gantry tilt is kept as a shear). Anything else raises
    :class:`~custom.io.geometry.DicomSeriesError` naming the series (UID and description), the file and the
    problem, never patient data.

    Output follows MONAI's readers (``swap_ij=True``): array axes (columns, rows, slices), metadata ``affine``
    and ``original_affine`` in RAS (or LPS with ``affine_lps_to_ras=False``), ``spatial_shape``, ``spacing``,
    ``space``, ``original_channel_dim`` = NaN (no channel), plus ``SeriesInstanceUID``, ``SeriesDescription``,
    ``Modality``, ``StudyInstanceUID`` and ``FrameOfReferenceUID``.

    Args:
        affine_lps_to_ras: convert the affine from DICOM LPS to RAS like MONAI's readers. Defaults to ``True``.
        kwargs: extra arguments for ``pydicom.dcmread``.

    Example::

        from monai.transforms import LoadImaged
        load = LoadImaged(keys="image", reader=DicomSeriesReader())
        data = load({"image": ["/in/s1/IM0001", "/in/s1/IM0002", ...]})  # or {"image": "/in/s1"}
    """

    def __init__(self, affine_lps_to_ras: bool = True, **kwargs):
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """True for a folder, or files that exist and do not carry a known non-DICOM suffix."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        if not names:
            return False
        for name in names:
            p = Path(name)
            if p.is_dir():
                continue
            if not p.is_file() or str(name).lower().endswith(_NON_DICOM_SUFFIXES):
                return False
        return True

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs) -> DicomSeriesData:
        """Read the datasets of one series: a list of files, a single (multi-frame) file, or one folder."""
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) == 1 and Path(names[0]).is_dir():
            folder = Path(names[0])
            names = sorted(str(p) for p in folder.iterdir() if p.is_file() and not is_dicomdir(p))
            names = [n for n in names if not n.lower().endswith(_NON_DICOM_SUFFIXES)]
            if not names:
                raise DicomSeriesError(f"series <unknown>: folder {folder} holds no DICOM files")
        elif any(Path(n).is_dir() for n in names):
            raise DicomSeriesError("series <unknown>: give either one folder or a list of files, not a mix")
        kw = {**self.kwargs, **kwargs}
        datasets, filenames = [], []
        for name in names:
            try:
                ds = pydicom.dcmread(str(name), **kw)
            except Exception as e:
                raise DicomSeriesError(f"series <unknown>: {name}: cannot be read as DICOM ({e})") from e
            if is_dicomdir(name, ds):
                continue
            datasets.append(ds)
            filenames.append(str(name))
        uids = {ds.get("SeriesInstanceUID") for ds in datasets}
        if len(uids) > 1:
            raise DicomSeriesError(
                f"series <unknown>: the files hold {len(uids)} series ({', '.join(sorted(map(str, uids)))}); "
                "give the files of one series"
            )
        return DicomSeriesData(datasets=datasets, filenames=filenames)

    def get_data(self, img: DicomSeriesData) -> tuple[np.ndarray, dict]:
        """Stack the series' frames into a float32 volume (columns, rows, slices) and its metadata."""
        geom = series_geometry(img.datasets, img.filenames)
        volume = self.stack(geom)
        affine = orientation_ras_lps(geom.affine_lps) if self.affine_lps_to_ras else geom.affine_lps.copy()
        first = geom.frames[0].dataset
        meta: dict = {k: str(first.get(k, "")) for k in _META_TAGS}
        meta[MetaKeys.ORIGINAL_AFFINE] = affine
        meta[MetaKeys.AFFINE] = affine.copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(volume.shape)
        meta[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        meta["spacing"] = affine_to_spacing(affine, r=3)
        return volume, meta

    @staticmethod
    def stack(geom: SeriesGeometry) -> np.ndarray:
        """Rescaled float32 pixels of the sorted frames, axes (columns, rows, slices)."""
        cols, rows, n = geom.shape
        volume = np.empty((cols, rows, n), dtype=np.float32)
        decoded: dict[int, np.ndarray] = {}  # multi-frame instances are decoded once
        for k, f in enumerate(geom.frames):
            key = id(f.dataset)
            try:
                if key not in decoded:
                    decoded[key] = f.dataset.pixel_array
                pixels = decoded[key] if f.frame_index is None else decoded[key].reshape(-1, rows, cols)[f.frame_index]
            except Exception as e:
                raise DicomSeriesError(f"{geom.label}: {f.where}: cannot decode pixel data ({e})") from e
            if pixels.shape != (rows, cols):
                raise DicomSeriesError(f"{geom.label}: {f.where}: pixel data shape {pixels.shape} != {(rows, cols)}")
            volume[:, :, k] = (pixels.astype(np.float64) * f.slope + f.intercept).T
        return volume
