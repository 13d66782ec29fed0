"""DICOM I/O: read a series as a MONAI image, write a derived synthetic series, run synthesis over a folder tree."""

from __future__ import annotations

from .batch import (
    DicomBatchError,
    DicomBatchSynthesis,
    FoundSeries,
    Redactor,
    SeriesRecord,
    find_dicom_series,
    without_savers,
)
from .geometry import DicomSeriesError, SeriesGeometry, series_geometry
from .reader import DicomSeriesData, DicomSeriesReader, read_dicom_header
from .synthetic import write_dicom_series
from .writer import DicomSeriesWriter, choose_rescale

__all__ = [
    "DicomBatchError",
    "DicomBatchSynthesis",
    "DicomSeriesData",
    "DicomSeriesError",
    "DicomSeriesReader",
    "DicomSeriesWriter",
    "FoundSeries",
    "Redactor",
    "SeriesGeometry",
    "SeriesRecord",
    "choose_rescale",
    "find_dicom_series",
    "read_dicom_header",
    "series_geometry",
    "without_savers",
    "write_dicom_series",
]
