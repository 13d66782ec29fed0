"""Batch synthesis over a folder tree of DICOM series, with a per-series report.

``DicomBatchSynthesis(...).run()`` finds every series under ``input_dir`` (recursively, any file names, several
series per folder, DICOMDIR ignored), selects the ones matching the source modality (and optionally a
SeriesDescription regex), and for each one runs ``preprocessing`` -> ``inferer(network)`` -> ``postprocessing``
and writes the result as a derived DICOM series into its own folder under ``output_dir``. ``report.json`` and
``report.csv`` list every series found with its status (written / skipped / failed), the reason, the output
folder and the seconds spent. Patient names, IDs and birth dates never reach the report, the log or the exit
message: they are redacted from every message, including file paths.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, LoadImage, LoadImaged, SaveImage, SaveImaged
from pydicom import Dataset
from pydicom.uid import UID

from .geometry import IMAGE_SOP_CLASSES, DicomSeriesError
from .reader import DicomSeriesReader, is_dicomdir, read_dicom_header
from .writer import DicomSeriesWriter

__all__ = ["DicomBatchSynthesis", "SeriesRecord", "FoundSeries", "find_dicom_series", "without_savers", "Redactor"]

logger = logging.getLogger(__name__)

WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"


@dataclass
class FoundSeries:
    """The header-only datasets and files of one SeriesInstanceUID found under the input folder."""

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


def find_dicom_series(root: str | os.PathLike) -> tuple[list[FoundSeries], list[tuple[str, str]], int]:
    """Group the DICOM files under ``root`` (recursively) by SeriesInstanceUID, reading headers only.

    Returns:
        (series sorted by UID, [(file, problem)] for files that announce DICOM but cannot be parsed or lack a
        SeriesInstanceUID, number of non-DICOM files ignored).
    """
    groups: dict[str, FoundSeries] = {}
    problems: list[tuple[str, str]] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if is_dicomdir(path):
                continue
            try:
                ds = read_dicom_header(path)
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
    return [groups[k] for k in sorted(groups)], problems, ignored


class Redactor:
    """Removes patient names, IDs and birth dates seen in the headers from any text (case-insensitive)."""

    _TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientNames", "OtherPatientIDs")

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
            self._regex = re.compile(rf"(?<![0-9A-Za-z])(?:{alts})(?![0-9A-Za-z])", re.IGNORECASE)
        return self._regex.sub("[redacted]", text)


def without_savers(postprocessing: Callable) -> Compose:
    """``postprocessing`` without its SaveImage(d) transforms, e.g. the inference config's, for the DICOM run."""
    transforms = postprocessing.transforms if isinstance(postprocessing, Compose) else [postprocessing]
    return Compose([t for t in transforms if not isinstance(t, (SaveImage, SaveImaged))])


def _error_message(e: BaseException) -> str:
    """The most specific message in an exception chain (MONAI's Compose wraps errors in RuntimeError)."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for exc in chain:
        if isinstance(exc, DicomSeriesError):
            return str(exc)
    inner = chain[-1]
    return f"{type(inner).__name__}: {inner}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "series"


class DicomBatchSynthesis:
    """Synthesise a target contrast for every matching DICOM series under a folder and write DICOM series.

    For each selected series: ``data = preprocessing({"image": files})``; under ``torch.inference_mode``
    ``pred = inferer(data["image"][None].to(device), network)[0]``, ``data["pred"] = pred``,
    ``data = postprocessing(data)`` (which must invert the preprocessing back onto the source grid, e.g.
    ``Invertd``, and must not save files); ``data["pred"]`` is written with :class:`DicomSeriesWriter`.
    The first ``LoadImage(d)`` in ``preprocessing`` gets a :class:`DicomSeriesReader` registered (it is then
    tried first and claims only DICOM inputs, so the same Compose still loads NIfTI).

    Each series is written into a temporary folder inside ``output_dir`` and renamed into place when complete;
    an existing output folder is left alone (reported as skipped) unless ``overwrite``. A series that cannot be
    processed is reported as failed and the rest still run; after the report is written, ``run`` raises
    ``SystemExit`` with a one-line summary when any series failed.

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
        self.overwrite = overwrite
        self.save_nifti = save_nifti
        if device is None:
            param = next(iter(network.parameters()), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.image_key, self.pred_key = image_key, pred_key
        self._attach_reader(preprocessing)
        savers = [t for t in getattr(postprocessing, "transforms", []) if isinstance(t, (SaveImage, SaveImaged))]
        if savers:
            raise ValueError(
                "postprocessing must not save files (the runner writes DICOM); "
                "pass custom.io.without_savers(postprocessing)."
            )
        self.records: list[SeriesRecord] = []
        self.redact = Redactor()

    @staticmethod
    def _attach_reader(preprocessing: Compose) -> None:
        loaders = [t for t in getattr(preprocessing, "transforms", []) if isinstance(t, (LoadImaged, LoadImage))]
        if not loaders:
            raise ValueError("preprocessing must be a Compose holding LoadImaged(keys='image').")
        inner = loaders[0]._loader if isinstance(loaders[0], LoadImaged) else loaders[0]
        if not any(isinstance(r, DicomSeriesReader) for r in inner.readers):
            loaders[0].register(DicomSeriesReader())

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> list[SeriesRecord]:
        """Process every series, write the reports; raise ``SystemExit`` (one line) if any series failed."""
        if not self.input_dir.is_dir():
            raise SystemExit(f"input_dir {self.input_dir} is not a folder")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        series, problems, ignored = find_dicom_series(self.input_dir)
        for s in series:
            for h in s.headers:
                self.redact.add(h)
        self.records = []
        for path, problem in problems:
            self.records.append(
                SeriesRecord("", "", "", "", 0, FAILED, f"{self._rel(path)}: {problem}",
                             source_folder=self._rel(os.path.dirname(path)))
            )
            logger.warning(self.redact(f"{self._rel(path)}: {problem}"))
        for s in series:
            record = self._process(s)
            self.records.append(record)
            logger.info(
                self.redact(
                    f"series {record.series_instance_uid} ({record.series_description!r}): {record.status}"
                    + (f" - {record.reason}" if record.reason else "")
                    + (f" -> {record.output_folder}" if record.output_folder else "")
                    + f" ({record.seconds:.2f} s)"
                )
            )
        for r in self.records:  # nothing identifying leaves this class
            for f in fields(r):
                if isinstance(v := getattr(r, f.name), str):
                    setattr(r, f.name, self.redact(v))
        self._write_reports(ignored)
        counts = {k: sum(r.status == k for r in self.records) for k in (WRITTEN, SKIPPED, FAILED)}
        summary = (
            f"DICOM synthesis: {len(self.records)} series, {counts[WRITTEN]} written, {counts[SKIPPED]} skipped, "
            f"{counts[FAILED]} failed; report: {self.output_dir / 'report.json'}"
        )
        logger.info(summary)
        if counts[FAILED]:
            raise SystemExit(summary)
        return self.records

    def _rel(self, path: str | os.PathLike) -> str:
        try:
            return str(Path(path).relative_to(self.input_dir))
        except ValueError:
            return str(path)

    def _select(self, s: FoundSeries) -> str | None:
        """Why the series is skipped, or None when it is to be processed."""
        if not s.sop_classes & IMAGE_SOP_CLASSES:
            names = sorted(getattr(UID(u), "name", u) for u in s.sop_classes)
            return f"not an MR/CT image series (SOP class {', '.join(names)})"
        if s.modality not in self.source_modalities:
            wanted = "/".join(sorted(self.source_modalities))
            return f"Modality {s.modality or '<none>'} is not the source modality {wanted}"
        if self.pattern is not None and not self.pattern.search(s.description):
            return f"SeriesDescription does not match {self.pattern.pattern!r}"
        return None

    def _process(self, s: FoundSeries) -> SeriesRecord:
        t0 = time.perf_counter()
        sop = sorted(getattr(UID(u), "name", u) for u in s.sop_classes)
        record = SeriesRecord(
            s.uid, s.description, s.modality, ", ".join(sop), s.slices, SKIPPED,
            source_folder=self._rel(os.path.dirname(s.files[0])),
        )
        reason = self._select(s)
        if reason is not None:
            record.reason = reason
            return record
        name = _safe_name(f"{self.target_description}_{s.uid}")
        final = self.output_dir / name
        if final.exists() and not self.overwrite:
            record.reason = f"output folder {name} exists (overwrite=False)"
            record.output_folder = name
            return record
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.output_dir))
        try:
            pred = self._synthesise(s.files)
            self.writer.write(pred, s.headers, tmp / "dicom", source_filenames=[self._rel(f) for f in s.files])
            if self.save_nifti:
                self._save_nifti(s.files, pred, tmp)
            if final.exists():  # overwrite: swap in, then drop the old folder
                old = Path(tempfile.mkdtemp(prefix=".partial-old-", dir=self.output_dir))
                os.replace(final, old / "dicom")
                os.replace(tmp / "dicom", final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp / "dicom", final)
            if self.save_nifti:
                (self.output_dir / "nifti").mkdir(exist_ok=True)
                for f in tmp.glob("*.nii.gz"):
                    os.replace(f, self.output_dir / "nifti" / f"{name}_{f.name}")
            record.status, record.output_folder = WRITTEN, name
        except Exception as e:
            record.status = FAILED
            message = _error_message(e).replace(str(self.input_dir) + os.sep, "")
            prefix = f"series {s.uid} ({s.description!r}): "  # the record names the series already
            message = message[len(prefix):] if message.startswith(prefix) else message
            record.reason = " | ".join(message.splitlines())[:2000]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            record.seconds = round(time.perf_counter() - t0, 3)
        return record

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

    def _write_reports(self, ignored: int) -> None:
        rows = [asdict(r) for r in self.records]
        report = {
            "input_dir": str(self.input_dir),
            "output_dir": str(self.output_dir),
            "source_modality": sorted(self.source_modalities),
            "series_description_pattern": self.pattern.pattern if self.pattern else None,
            "target_modality": self.writer.target_modality,
            "target_description": self.target_description,
            "ignored_non_dicom_files": ignored,
            "counts": {k: sum(r.status == k for r in self.records) for k in (WRITTEN, SKIPPED, FAILED)},
            "series": rows,
        }
        tmp = self.output_dir / ".report.json.partial"
        tmp.write_text(self.redact(json.dumps(report, indent=2)))
        os.replace(tmp, self.output_dir / "report.json")
        tmp = self.output_dir / ".report.csv.partial"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[f.name for f in fields(SeriesRecord)])
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.output_dir / "report.csv")
