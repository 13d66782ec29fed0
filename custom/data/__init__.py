"""Dataset preparation: datalists, and the embedded demo data simulated from the MNI ICBM152 template.

The demo generator and its simulation are imported on first use (PEP 562), so importing this package stays
cheap and ``python -m custom.data.demo`` runs the module once, without a double-import warning.
"""

from __future__ import annotations

from custom.utils.lazy import lazy_exports

from .datalist import IMAGE_SUFFIXES, DatasetError, find_images, load_datalist, prepare_dataset
from .dataset import ERROR_KEY, INELIGIBLE_KEY, TolerantDataset

_LAZY = {
    "demo": (
        "CONTRASTS",
        "SPLITS",
        "DATALIST_NAME",
        "RECORD_NAME",
        "MASK_NAME",
        "LESION_NAME",
        "generate_demo_dataset",
    ),
    "simulation": (
        "DEFAULT_SETTINGS",
        "MEAN_SUBJECT",
        "SEQUENCES",
        "TISSUE_PROPERTIES",
        "SimulatedSubject",
        "SimulationSettings",
        "Template",
        "load_mni152",
        "load_template",
        "pointwise_mapping_psnr",
        "pointwise_remap",
        "robust_normalise",
        "simulate_subject",
    ),
}

__all__ = [
    # datalists
    "DatasetError",
    "IMAGE_SUFFIXES",
    "find_images",
    "load_datalist",
    "prepare_dataset",
    "ERROR_KEY",
    "INELIGIBLE_KEY",
    "TolerantDataset",
    # demo data and its simulation
    *_LAZY["demo"],
    *_LAZY["simulation"],
]


__getattr__ = lazy_exports(__name__, _LAZY)
