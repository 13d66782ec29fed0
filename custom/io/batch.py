"""Batch synthesis over a folder tree of DICOM series, with a per-series report.

``DicomBatchSynthesis(...).run()`` finds every series under ``input_dir`` (recursively, any file names, several
series per folder, DICOMDIR ignored; regular files only, symlinked folders and ``output_dir`` are not searched),
selects the ones matching the source modality (and optionally a SeriesDescription regex), never one this software
wrote, and for each one runs ``preprocessing`` -> ``inferer(network)`` -> ``postprocessing`` and writes the result
as a derived DICOM series into its own folder under ``output_dir``, named ``<target>_s<SeriesNumber>_<hash>``
(e.g. ``t2w_s0003_1a2b3c4d``, the hash being the first 8 hex digits of the SHA-256 of the SeriesInstanceUID).
``report.json`` and ``report.csv`` list every series found with its status (written / skipped / failed), the
reason, the output folder and the seconds spent. Patient names, IDs and birth dates never reach the report, the
log or the exit message: they are redacted from paths and free text (never from UIDs, SOP class names or the
output folder names, which hold none), and pydicom's own warnings, which quote tag values, are silenced during a
run.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, LoadImage, LoadImaged, SaveImage, SaveImaged
from pydicom import Dataset
from pydicom.uid import UID

from ..bundle import as_flag
from ..engines.evaluator import FAILED, SKIPPED, WRITTEN, SynthesisError, sigterm_interrupts
from ..utils.errors import describe_error
from ..transforms.io import OutputWriteError, loader_of, remove_stale_partials, write_file_atomic
from .eligibility import (
    MAX_SKULL_FRACTION,
    MIN_FOV_MM,
    MIN_MATRIX,
    field_of_view_problem,
    head_problem,
    series_problem,
)
from .geometry import IMAGE_SOP_CLASSES, DicomSeriesError, SeriesGeometry, series_geometry
from .reader import DicomSeriesReader, SeriesInstances, is_dicomdir, read_dicom_header, read_instances
from .writer import DicomSeriesWriter

__all__ = [
    "DicomBatchError",
    "DicomBatchSynthesis",
    "SeriesRecord",
    "FoundSeries",
    "find_dicom_series",
    "without_savers",
    "Redactor",
    "HEADER_TAGS",
]

logger = logging.getLogger(__name__)

_PARTIAL = ".partial-"  # temporary series folders in output_dir; what a killed run left is swept
_PARTIAL_FOLDER = re.compile(re.escape(_PARTIAL) + "[a-z0-9_]{8}")  # the names tempfile.mkdtemp(prefix=_PARTIAL) gives
_LOCK = ".dicom-synthesis.lock"
_PATIENT_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientNames", "OtherPatientIDs")

#: The header elements discovery keeps per file (grouping, selection and eligibility, folder name, report, redaction,
#: the check for series this software wrote); the rest is skipped unread. The writer gets the whole header of one
#: series at a time.
HEADER_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "Modality",
    "NumberOfFrames",
    "ImageType",
    "ComplexImageComponent",
    "Rows",
    "Columns",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DerivationDescription",
    *_PATIENT_TAGS,
)


class DicomBatchError(RuntimeError):
    """A DICOM batch run cannot start: ``input_dir`` or ``output_dir`` cannot be used as such, or another run holds
    ``output_dir``; the message names the folder. Nothing was read or written."""


@dataclass
class FoundSeries:
    """The header datasets (:data:`HEADER_TAGS` only) and files of one SeriesInstanceUID found under the input
    folder."""

    uid: str
    headers: list[Dataset]
    files: list[str]

    @property
    def description(self) -> str:
        return str(self.headers[0].get("SeriesDescription", ""))

    @property
    def modality(self) -> str:
        return str(self.headers[0].get("Modality", ""))

    @property
    def sop_classes(self) -> set[str]:
        return {str(h.get("SOPClassUID", "")) for h in self.headers}

    @property
    def slices(self) -> int:
        return sum(int(h.get("NumberOfFrames", 1) or 1) for h in self.headers)


@dataclass
class SeriesRecord:
    """One row of the report."""

    series_instance_uid: str
    series_description: str
    modality: str
    sop_class: str
    slices: int
    status: str  # written | skipped | failed
    reason: str = ""
    output_folder: str = ""
    source_folder: str = ""
    seconds: float = 0.0
    study_instance_uid: str = ""  # groups the rows of one study
    study_date: str = ""
    study_description: str = ""
    series_number: str = ""


_FREE_TEXT = ("series_description", "study_description", "reason", "source_folder")  # may hold patient data: redacted


def _inode(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_dicom_series(
    root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()
) -> tuple[list[FoundSeries], list[tuple[str, str]], int, list[tuple[str, str]]]:
    """Group the DICOM files under ``root`` (recursively) by SeriesInstanceUID, reading :data:`HEADER_TAGS` only.

    Only regular files are read (a FIFO or a link to a device is passed over); symlinked folders and the folders in
    ``exclude`` (e.g. the output folder) are not searched.

    Returns:
        (series sorted by UID, [(file, problem)] for files that announce DICOM but cannot be parsed or lack a
        SeriesInstanceUID, number of non-DICOM files ignored, [(path, why)] for what was passed over unread).
    """
    excluded = {_inode(p) for p in exclude} - {None}
    groups: dict[str, FoundSeries] = {}
    problems: list[tuple[str, str]] = []
    passed: list[tuple[str, str]] = []
    ignored = 0

    def not_readable(err: OSError) -> None:
        passed.append((str(err.filename), f"folder not readable ({err.strerror or type(err).__name__})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=not_readable):
        kept = []
        for name in sorted(dirnames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                passed.append((path, "symlinked folder, not followed"))
            elif _inode(path) not in excluded:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if is_dicomdir(path):
                continue
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    passed.append((path, "not a regular file"))
                    continue
                ds = read_dicom_header(path, HEADER_TAGS)
                for tag in HEADER_TAGS if ds is not None else ():
                    str(ds.get(tag, ""))  # decode now: a malformed value is this file's problem, not the run's
            except Exception as e:
                problems.append((path, f"unreadable DICOM file ({type(e).__name__}: {e})"))
                continue
            if ds is None or is_dicomdir(path, ds):
                ignored += 1
                continue
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if not uid:
                problems.append((path, "DICOM file without SeriesInstanceUID"))
                continue
            groups.setdefault(uid, FoundSeries(uid, [], [])).headers.append(ds)
            groups[uid].files.append(path)
    return [groups[k] for k in sorted(groups)], problems, ignored, passed


class Redactor:
    """Removes patient names, IDs and birth dates seen in the headers from any text (case-insensitive).

    UIDs in the text (``1.2.840...``) are left whole, so a PatientID "12" does not cut them up; a UID-shaped
    token that is itself a patient value (a PatientID "1.7.55") is redacted.
    """

    _TAGS = _PATIENT_TAGS
    _UID = r"(?<![\w.])[012](?:\.\d+)+(?!\w|\.\d)"

    def __init__(self):
        self._words: set[str] = set()
        self._regex: re.Pattern | None = None

    def add(self, ds: Dataset) -> None:
        for tag in self._TAGS:
            value = ds.get(tag)
            if value is None:
                continue
            for item in value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]:
                text = str(item).strip()
                # family, given and middle names (not prefix/suffix such as "MR"), and the whole value
                parts = {text} | {w for c in text.split("=")[0].split("^")[:3] for w in re.split(r"[\s,]+", c)}
                self._words |= {p for p in parts if len(p) >= 2}
        self._regex = None

    def __call__(self, text: str) -> str:
        if not self._words or not text:
            return text
        if self._regex is None:
            alts = "|".join(re.escape(w) for w in sorted(self._words, key=len, reverse=True))
            self._regex = re.compile(rf"({self._UID})|(?<![0-9A-Za-z])(?:{alts})(?![0-9A-Za-z])", re.IGNORECASE)
        return self._regex.sub(self._replace, text)

    def _replace(self, match: re.Match) -> str:
        uid = match.group(1)  # a UID is kept whole, unless it is itself a patient value
        return uid if uid is not None and uid not in self._words else "[redacted]"


def _printable(text: str) -> str:
    """``text`` without control characters or line breaks, so a value read from a file cannot forge log lines."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", "?", text)


def _is_saver(transform: Callable) -> bool:
    return isinstance(transform, (SaveImage, SaveImaged))


def without_savers(postprocessing: Callable) -> Compose:
    """``postprocessing`` without its SaveImage(d) transforms, e.g. the inference config's, for the DICOM run."""
    transforms = postprocessing.transforms if isinstance(postprocessing, Compose) else [postprocessing]
    return Compose([t for t in transforms if not _is_saver(t)])


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "series"


# ------------------------------------------------------------------------------------------- run guards
def _lock(folder: Path) -> int:
    """Hold ``folder/.dicom-synthesis.lock`` (``flock``) for the run; :class:`DicomBatchError` when another run
    holds it, :class:`~custom.transforms.OutputWriteError` when it cannot be created."""
    path = folder / _LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OutputWriteError(f"output_dir {folder} is not writable ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DicomBatchError(f"output_dir {folder} is in use by another DICOM synthesis run ({_LOCK})") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)  # the previous holder removed the file as it ended: lock the one there now


def _unlock(folder: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / _LOCK)  # while still held, so no other run locks a file that is about to go
    os.close(fd)


def _sweep(folder: Path) -> None:
    """Remove what killed runs left in ``folder`` itself (temporary series folders, which hold patient data, and
    report files); only names a run creates, nothing below them (``input_dir`` may lie there). Called under the
    lock: no other run is writing there."""
    remove_stale_partials(folder)
    for p in folder.iterdir():
        if _PARTIAL_FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def _drop(_record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def _pydicom_silenced():
    """pydicom's warnings quote tag values ("Invalid value for VR DA: '<birth date>'"): none reach the console."""
    pydicom_logger = logging.getLogger("pydicom")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pydicom")
        pydicom_logger.addFilter(_drop)
        try:
            yield
        finally:
            pydicom_logger.removeFilter(_drop)


class DicomBatchSynthesis:
    """Synthesise a target contrast for every matching DICOM series under a folder and write DICOM series.

    For each selected series: ``data = preprocessing({"image": files})``; under ``torch.inference_mode``
    ``pred = inferer(data["image"][None].to(device), network)[0]``, ``data["pred"] = pred``,
    ``data = postprocessing(data)`` (which must invert the preprocessing back onto the source grid, e.g.
    ``Invertd``, and must not save files); ``data["pred"]`` is written with :class:`DicomSeriesWriter`.
    The first ``LoadImage(d)`` in ``preprocessing`` gets a :class:`DicomSeriesReader` registered (it is then
    tried first and claims only DICOM inputs, so the same Compose still loads NIfTI).

    A run holds a lock file in ``output_dir`` (a second run into the same folder stops with one line) and first
    removes the temporary folders that killed runs left there. Each series is written into a temporary folder
    inside ``output_dir`` and renamed into place when complete; the rename is the check, so an existing output
    folder, even one another process wrote meanwhile, is left alone (reported as skipped) unless ``overwrite``.
    A series that cannot be processed is reported as failed and the rest still run; a series whose folder holds
    unreadable DICOM files is written with a reason saying it may lack slices. Several files of one SOP instance
    (archives hold byte copies, some truncated) count once: the first readable copy is used, the others get rows
    of their own (skipped), and a file of which no copy is readable gets a failed row while the series is written
    from the rest when its geometry is complete.

    Eligibility (:mod:`custom.io.eligibility`): a series the model cannot take is reported as skipped with the
    reason, not as failed: ImageType mosaic, phase, projection or localizer; several orientations (tri-plane
    localizer) or several images per slice position (echoes, time points, diffusion); fewer than ``min_matrix``
    rows or columns; an in-plane field of view under ``min_fov_mm``; for MR, a whole head with skull (the model
    is trained on skull-stripped brains; :func:`~custom.io.eligibility.head_problem`).

    Slicing plane: the inferer's. The bundle's (:class:`custom.inferers.AcquisitionPlaneSliceInferer`) slices a
    volume axially after RAS reorientation (the plane the model is trained on) and a single slice or thin slab along
    its own acquisition plane, so the network sees whole acquired slices rather than one-pixel strips.

    After the report is written, ``run`` raises :class:`~custom.engines.SynthesisError` with a one-line summary
    when any series failed, when no series was eligible (nothing to synthesise: e.g. a CT-only archive for an MR
    source), or when the run was interrupted (SIGINT or SIGTERM). Folders that cannot be used raise
    :class:`DicomBatchError` (or :class:`~custom.transforms.OutputWriteError`) before anything is read. The bundle's
    command line prints these as one line and exits non-zero (:func:`custom.utils.report_errors_briefly`).
    ``output_dir`` may lie inside ``input_dir`` (it is not searched) but may not be it.

    Args:
        input_dir: folder tree to search.
        output_dir: where series folders, ``report.json`` and ``report.csv`` go (created).
        preprocessing: a Compose whose first loader is ``LoadImaged(keys="image")``.
        inferer: a MONAI inferer, called as ``inferer(image, network)``.
        network: the synthesiser module.
        postprocessing: a Compose inverting the preprocessing onto ``data["pred"]``.
        source_modality: Modality (or several) of the series to synthesise from.
        series_description_pattern: optional regex (searched, case-insensitive) the SeriesDescription must match.
        target_modality: ``"MR"`` or ``"CT"``.
        target_description: the synthesised contrast, e.g. ``"T2w"``.
        overwrite: replace existing output series folders.
        save_nifti: also write ``output_dir/nifti/<folder>_source.nii.gz`` and ``..._synthetic.nii.gz``.
        min_matrix: smallest number of rows and of columns (:data:`~custom.io.eligibility.MIN_MATRIX`).
        min_fov_mm: smallest in-plane field of view in mm (:data:`~custom.io.eligibility.MIN_FOV_MM`).
        max_skull_fraction: largest skull shell fraction of an MR source
            (:data:`~custom.io.eligibility.MAX_SKULL_FRACTION`); ``None`` synthesises whole heads too.
        device: where the network runs; defaults to the device of the network's first parameter (or CPU).
        image_key, pred_key: the data keys.
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        preprocessing: Compose,
        inferer: Callable,
        network: torch.nn.Module,
        postprocessing: Callable,
        source_modality: str | Sequence[str] = "MR",
        series_description_pattern: str | None = None,
        target_modality: str = "MR",
        target_description: str = "T2w",
        overwrite: bool = False,
        save_nifti: bool = False,
        min_matrix: int = MIN_MATRIX,
        min_fov_mm: float = MIN_FOV_MM,
        max_skull_fraction: float | None = MAX_SKULL_FRACTION,
        device: str | torch.device | None = None,
        image_key: str = "image",
        pred_key: str = "pred",
    ):
        self.input_dir = Path(input_dir)
        self.output_dir = Path(output_dir)
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.network = network
        self.postprocessing = postprocessing
        self.source_modalities = {source_modality} if isinstance(source_modality, str) else set(source_modality)
        if not self.source_modalities:
            raise ValueError("source_modality must name at least one Modality.")
        self.pattern = re.compile(series_description_pattern, re.IGNORECASE) if series_description_pattern else None
        self.writer = DicomSeriesWriter(target_modality=target_modality, target_description=target_description)
        self.target_description = target_description
        self.overwrite = as_flag(overwrite, "overwrite")
        self.save_nifti = as_flag(save_nifti, "save_nifti")
        self.min_matrix, self.min_fov_mm = int(min_matrix), float(min_fov_mm)
        self.max_skull_fraction = None if max_skull_fraction is None else float(max_skull_fraction)
        if device is None:
            param = next(iter(network.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.image_key, self.pred_key = image_key, pred_key
        self._attach_reader(preprocessing)
        if any(map(_is_saver, getattr(postprocessing, "transforms", [postprocessing]))):
            raise ValueError(
                "postprocessing must not save files (the runner writes DICOM); "
                "pass custom.io.without_savers(postprocessing)."
            )
        self.records: list[SeriesRecord] = []
        self.redact = Redactor()
        self._eligible = 0  # series of this run that passed every eligibility check

    @staticmethod
    def _attach_reader(preprocessing: Compose) -> None:
        loaders = [t for t in getattr(preprocessing, "transforms", []) if isinstance(t, (LoadImaged, LoadImage))]
        if not loaders:
            raise ValueError("preprocessing must be a Compose holding LoadImaged(keys='image').")
        if not any(isinstance(r, DicomSeriesReader) for r in loader_of(loaders[0]).readers):
            loaders[0].register(DicomSeriesReader())

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> list[SeriesRecord]:
        """Process every series and write the reports; raise :class:`~custom.engines.SynthesisError` (a one-line
        summary) if any series failed, none was eligible or the run was interrupted; :class:`DicomBatchError` or
        :class:`~custom.transforms.OutputWriteError` before anything is read when the folders cannot be used."""
        self._check_folders()
        lock = _lock(self.output_dir)
        try:
            with _pydicom_silenced(), sigterm_interrupts():
                interrupted = self._run()
        finally:
            _unlock(self.output_dir, lock)
        counts = {k: sum(r.status == k for r in self.records) for k in (WRITTEN, SKIPPED, FAILED)}
        noted = sum(r.status == WRITTEN and bool(r.reason) for r in self.records)
        wanted = "/".join(sorted(self.source_modalities))
        nothing_eligible = not self._eligible and not counts[FAILED]  # every row skipped as not eligible
        head = "interrupted" if interrupted else f"found no eligible {wanted} series" if nothing_eligible else ""
        summary = _printable(
            f"DICOM synthesis{' ' + head if head else ''}: {len(self.records)} series, "
            f"{counts[WRITTEN]} written{f' ({noted} may lack slices)' if noted else ''}, {counts[SKIPPED]} skipped, "
            f"{counts[FAILED]} failed; report: {self.redact(str(self.output_dir / 'report.json'))}"
        )
        logger.info(summary)
        if counts[FAILED] or interrupted or nothing_eligible:
            raise SynthesisError(summary)
        return self.records

    def _check_folders(self) -> None:
        """One clear line, before anything is read or written, for folders that cannot work."""
        if not self.input_dir.is_dir():
            raise DicomBatchError(f"input_dir {self.input_dir} is not a folder")
        if self.output_dir.resolve() == self.input_dir.resolve():
            raise DicomBatchError(
                f"output_dir is input_dir ({self.input_dir}); choose another folder (a subfolder is fine)"
            )
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise DicomBatchError(f"output_dir {self.output_dir} is not a folder")
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputWriteError(f"output_dir {self.output_dir} cannot be created ({e.strerror or e})") from None

    def _run(self) -> bool:
        """Discover, process and report (under the lock); True when interrupted by SIGINT or SIGTERM."""
        self.records, series, ignored, passed, done, self._eligible = [], [], 0, [], 0, 0
        try:
            _sweep(self.output_dir)
            series, problems, ignored, passed = find_dicom_series(self.input_dir, exclude=[self.output_dir])
            for s in series:
                for h in s.headers:
                    self.redact.add(h)
            for path, why in passed:
                logger.warning(_printable(self.redact(f"{self._rel(path)}: {why}")))
            for path, problem in problems:
                self._file_row(path, FAILED, problem)
            unreadable = {os.path.dirname(p) for p, _ in problems}
            taken: set[str] = set()
            for s in series:
                self._add(self._process(s, taken, unreadable))
                done += 1
        except KeyboardInterrupt:
            for s in series[done:]:
                self._add(self._record(s, SKIPPED, "not processed: the run was interrupted"))
            self._write_reports(ignored, passed)
            return True
        self._write_reports(ignored, passed)
        return False

    def _add(self, record: SeriesRecord) -> None:
        """Clean, redact the free text of, log and keep one row."""
        for f in fields(record):
            if isinstance(v := getattr(record, f.name), str):
                setattr(record, f.name, self.redact(_printable(v)) if f.name in _FREE_TEXT else _printable(v))
        self.records.append(record)
        if not record.series_instance_uid:  # an unreadable file, not a series
            logger.warning(record.reason)
            return
        logger.info(
            f"series {record.series_instance_uid} ({record.series_description!r}): {record.status}"
            + (f" - {record.reason}" if record.reason else "")
            + (f" -> {record.output_folder}" if record.output_folder else "")
            + f" ({record.seconds:.2f} s)"
        )

    def _rel(self, path: str | os.PathLike) -> str:
        try:
            return str(Path(path).relative_to(self.input_dir))
        except ValueError:
            return str(path)

    def _record(self, s: FoundSeries, status: str, reason: str = "") -> SeriesRecord:
        record = SeriesRecord(s.uid, "", "", "", 0, status, reason)
        with contextlib.suppress(Exception):  # a malformed header value leaves its column empty
            record.series_description, record.modality = s.description, s.modality
            record.sop_class = ", ".join(sorted(getattr(UID(u), "name", u) for u in s.sop_classes))
            record.slices, record.source_folder = s.slices, self._rel(os.path.dirname(s.files[0]))
            first = s.headers[0]
            record.study_instance_uid, record.study_date, record.study_description, record.series_number = (
                str(first.get(t, "") or "")
                for t in ("StudyInstanceUID", "StudyDate", "StudyDescription", "SeriesNumber")
            )
        return record

    def _made_here(self, ds: Dataset) -> bool:
        """Whether ``ds`` belongs to a series this software wrote (the writer names itself in these elements)."""
        marks = " ".join(
            str(ds.get(t, "")) for t in ("ManufacturerModelName", "SoftwareVersions", "DerivationDescription")
        )
        return self.writer.software in marks

    def _select(self, s: FoundSeries) -> str | None:
        """Why the series is skipped, or None when it is to be processed."""
        if not s.sop_classes & IMAGE_SOP_CLASSES:
            names = sorted(getattr(UID(u), "name", u) for u in s.sop_classes)
            return f"not an MR/CT image series (SOP class {', '.join(names)})"
        if self._made_here(s.headers[0]):
            return f"a synthetic series written by {self.writer.software}, never used as a source"
        if s.modality not in self.source_modalities:
            wanted = "/".join(sorted(self.source_modalities))
            return f"Modality {s.modality or '<none>'} is not the source modality {wanted}"
        if self.pattern is not None and not self.pattern.search(s.description):
            return f"SeriesDescription does not match {self.pattern.pattern!r}"
        return series_problem(s.headers, self.min_matrix)

    def folder_name(self, s: FoundSeries) -> str:
        """``<target>_s<SeriesNumber>_<8 hex of SHA-256(SeriesInstanceUID)>``: readable, without patient data, and
        one per UID (UIDs that only differ in characters a file name cannot hold still get their own)."""
        number = str(s.headers[0].get("SeriesNumber", "") or "").strip()
        part = f"s{int(number):04d}_" if number.isascii() and number.isdigit() and len(number) <= 12 else ""
        digest = hashlib.sha256(s.uid.encode("utf-8", "backslashreplace")).hexdigest()[:8]
        return f"{_safe_name(self.target_description).lower()}_{part}{digest}"

    def _process(self, s: FoundSeries, taken: set[str], unreadable: set[str]) -> SeriesRecord:
        t0 = time.perf_counter()
        record = self._record(s, SKIPPED)
        tmp = None
        try:
            reason = self._select(s)
            if reason is not None:
                record.reason = reason
                return record
            name = self.folder_name(s)
            if name in taken:
                raise DicomSeriesError(f"output folder {name} is already that of another series of this run")
            taken.add(name)
            final = self.output_dir / name
            if final.exists() and not self.overwrite:
                self._eligible += 1  # an earlier run wrote it: nothing to do is no error
                record.reason, record.output_folder = f"output folder {name} exists (overwrite=False)", name
                return record
            instances = self._instances(s)
            if not instances.datasets:
                raise DicomSeriesError("no instance of the series is readable (see the failed rows)")
            geom = series_geometry(instances.datasets, instances.filenames)
            record.slices = len(geom.frames)
            reason = field_of_view_problem(geom, self.min_fov_mm) or self._head_problem(s, geom)
            if reason is not None:
                record.reason = reason
                return record
            self._eligible += 1
            for ds in instances.datasets:
                del ds.PixelData  # the writer needs the headers only
            files = instances.filenames
            tmp = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=self.output_dir))
            pred = self._synthesise(files)
            self.writer.write(pred, instances.datasets, tmp / "dicom", source_filenames=[self._rel(f) for f in files])
            if self.save_nifti:
                self._save_nifti(files, pred, tmp)
            if not self._place(tmp / "dicom", final):
                record.reason = f"output folder {name} was written meanwhile by another process (overwrite=False)"
                record.output_folder = name
                return record
            if self.save_nifti:
                (self.output_dir / "nifti").mkdir(exist_ok=True)
                for f in tmp.glob("*.nii.gz"):
                    os.replace(f, self.output_dir / "nifti" / f"{name}_{f.name}")
            record.status, record.output_folder = WRITTEN, name
            # an unreadable edge slice leaves no gap to detect: any unreadable file beside the series is worth a word
            beside_unreadable = instances.unreadable or unreadable & {os.path.dirname(f) for f in s.files}
            if beside_unreadable:
                record.reason = "its folder holds unreadable DICOM files (see the failed rows): slices may be missing"
        except Exception as e:
            record.status = FAILED
            message = describe_error(e).replace(str(self.input_dir) + os.sep, "")
            # the record names the series already: "DicomSeriesError: series <uid> ('<description>'): ..." loses it
            record.reason = message.replace(f"series {s.uid} ({record.series_description!r}): ", "", 1)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            record.seconds = round(time.perf_counter() - t0, 3)
        return record

    def _place(self, folder: Path, final: Path) -> bool:
        """Rename the finished ``folder`` onto ``final``; False when ``final`` exists and may not be replaced.

        The rename is the check (it fails on a non-empty folder), so two processes never both write one series.
        """
        if self.overwrite and final.exists():  # swap in, then drop the old folder
            old = Path(tempfile.mkdtemp(prefix=_PARTIAL, dir=self.output_dir))
            try:
                os.replace(final, old / "dicom")
                os.replace(folder, final)
            except BaseException:  # a failed rename or an interrupt: the previous output goes back in place
                if (old / "dicom").exists() and not final.exists():
                    os.replace(old / "dicom", final)
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return True
        try:
            os.rename(folder, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        return True

    def _instances(self, s: FoundSeries) -> SeriesInstances:
        """The series' files read whole, one readable copy per SOP instance; a row for each file left out."""
        instances = read_instances(s.files)
        for path, problem, used in instances.duplicates:
            why = f"another copy of a SOP instance of series {s.uid}, not used ({self._rel(used)} is)"
            self._file_row(path, SKIPPED, f"{why}{f': {problem}' if problem else ''}")
        for path, problem in instances.unreadable:
            self._file_row(path, FAILED, f"unreadable instance of series {s.uid}: {problem}")
        return instances

    def _file_row(self, path: str, status: str, reason: str) -> None:
        self._add(
            SeriesRecord(
                "",
                "",
                "",
                "",
                0,
                status,
                f"{self._rel(path)}: {reason}",
                source_folder=self._rel(os.path.dirname(path)),
            )
        )

    def _head_problem(self, s: FoundSeries, geom: SeriesGeometry) -> str | None:
        """A whole head with skull in an MR source (the check needs MR contrast: bone is bright in CT)."""
        if self.max_skull_fraction is None or s.modality != "MR":
            return None
        spacing = (*geom.frames[0].pixel_spacing[::-1], geom.slice_spacing)  # along the stack's (columns, rows, slices)
        return head_problem(DicomSeriesReader.stack(geom), spacing, slice_axis=2, max_fraction=self.max_skull_fraction)

    def _synthesise(self, files: list[str]) -> torch.Tensor:
        data = self.preprocessing({self.image_key: files})
        self.network.eval()
        with torch.inference_mode():
            pred = self.inferer(data[self.image_key][None].to(self.device), self.network)[0]
            data[self.pred_key] = pred
            data = self.postprocessing(data)
        return data[self.pred_key]

    def _save_nifti(self, files: list[str], pred: torch.Tensor, folder: Path) -> None:
        import nibabel as nib

        src, meta = DicomSeriesReader().get_data(DicomSeriesReader().read(files))
        nib.save(nib.Nifti1Image(src, np.asarray(meta["affine"])), folder / "source.nii.gz")
        arr = pred.detach().cpu().numpy().astype(np.float32)
        arr = arr[0] if arr.ndim == 4 else arr
        nib.save(nib.Nifti1Image(arr, np.asarray(pred.affine.cpu(), np.float64)), folder / "synthetic.nii.gz")

    def _write_reports(self, ignored: int, passed: list[tuple[str, str]]) -> None:
        rows = [asdict(r) for r in self.records]
        report = {
            "input_dir": self.redact(str(self.input_dir)),
            "output_dir": self.redact(str(self.output_dir)),
            "source_modality": sorted(self.source_modalities),
            "series_description_pattern": self.pattern.pattern if self.pattern else None,
            "target_modality": self.writer.target_modality,
            "target_description": self.target_description,
            "ignored_non_dicom_files": ignored,
            "not_read": [self.redact(_printable(f"{self._rel(p)}: {why}")) for p, why in passed],
            "counts": {k: sum(r.status == k for r in self.records) for k in (WRITTEN, SKIPPED, FAILED)},
            "series": rows,
        }
        # ensure_ascii=False: non-ASCII text reads as written (MÜLLER, not M\u00dcLLER); patient data were redacted
        # from the fields above, before serialising
        write_file_atomic(self.output_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
        table = io.StringIO()
        w = csv.DictWriter(table, fieldnames=[f.name for f in fields(SeriesRecord)])
        w.writeheader()
        w.writerows(rows)
        write_file_atomic(self.output_dir / "report.csv", table.getvalue())
