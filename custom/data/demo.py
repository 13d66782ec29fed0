"""The bundle's embedded default data: paired brain MR subjects simulated from the MNI ICBM152 2009a template.

Every subject is drawn from ``(seed, split, index)`` alone, so a dataset is reproducible bit-for-bit, and a
split's subjects do not change when another split's size does. The physics, anatomy and variability are in
:mod:`custom.data.simulation`; this module validates arguments, writes NIfTI files, the datalist and a
provenance record, all or nothing.

Command line::

    python -m custom.data.demo --output_dir /tmp/demo --source t1w --target flair
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from numbers import Integral, Real
from pathlib import Path

import nibabel as nib
import numpy as np

from .simulation import (
    CONTRASTS,
    DEFAULT_SETTINGS,
    SEQUENCES,
    TEMPLATE_NAME,
    TISSUE_PROPERTIES,
    load_template,
    simulate_subject,
)

__all__ = [
    "CONTRASTS",
    "SPLITS",
    "DATALIST_NAME",
    "RECORD_NAME",
    "MASK_NAME",
    "LESION_NAME",
    "generate_demo_dataset",
    "main",
]

SPLITS = ("training", "validation", "test")
DATALIST_NAME = "datalist.json"
RECORD_NAME = "dataset.json"
MASK_NAME = "brain_mask"
LESION_NAME = "lesion"
_SUFFIX = ".nii.gz"


def _check_arguments(source, target, counts: dict, seed, spacing, output_dir: Path) -> None:
    """Raise one clear error for the first bad argument; writes nothing."""
    for name, value in (("source", source), ("target", target)):
        if not isinstance(value, str) or value not in CONTRASTS:
            raise ValueError(f"{name}={value!r} is not a known contrast; choose one of {CONTRASTS}.")
    if source == target:
        raise ValueError(f"source={source!r} and target={target!r} must be different contrasts.")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer (at least one subject per split).")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer.")
    if isinstance(spacing, bool) or not isinstance(spacing, Real) or not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"spacing={spacing!r} must be a positive number of mm.")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"output_dir='{output_dir}' already exists and is not an empty folder.")


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=4)  # MNI152 space
    image.header.set_sform(affine, code=4)
    nib.save(image, path)


def generate_demo_dataset(
    output_dir: str | os.PathLike,
    source: str = "t1w",
    target: str = "t2w",
    num_training: int = 24,
    num_validation: int = 4,
    num_test: int = 4,
    seed: int = 0,
    spacing: float = 2.0,
) -> Path:
    """Simulate paired subjects and write them with a MONAI-style datalist; return the datalist path.

    Writes ``<split>/subject_<k>/{<source>,<target>,brain_mask,lesion}.nii.gz`` (float32 images, uint8 brain
    and lesion masks on the target's pose; RAS affines of the MNI template at voxel size ``spacing``),
    ``datalist.json`` with the lists ``training``, ``validation``, ``test`` of
    ``{"image": source, "label": target, "mask": brain mask, "lesion": lesion mask}``
    (paths relative to ``output_dir``) and ``dataset.json`` (provenance). The folder appears complete or not
    at all: it is built in a temporary sibling and renamed into place.

    Args:
        output_dir: dataset folder to create; it must not exist or be empty.
        source: source contrast (the network input), one of :data:`CONTRASTS`.
        target: target contrast (to be synthesised), one of :data:`CONTRASTS`, not ``source``.
        num_training: number of training subjects (>= 1).
        num_validation: number of validation subjects (>= 1).
        num_test: number of test subjects (>= 1).
        seed: dataset seed (>= 0); subject ``k`` of a split depends only on ``(seed, split, k)``.
        spacing: output voxel size in mm (> 0); 2 mm gives 99x117x95 volumes.

    Example::

        datalist = generate_demo_dataset("/tmp/demo", source="t1w", target="flair", num_training=8)
    """
    output_dir = Path(output_dir).expanduser().absolute()
    counts = {"num_training": num_training, "num_validation": num_validation, "num_test": num_test}
    _check_arguments(source, target, counts, seed, spacing, output_dir)
    template = load_template(float(spacing))

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".partial", dir=output_dir.parent))
    try:
        datalist = {}
        for split_code, (split, count) in enumerate(zip(SPLITS, counts.values())):
            entries = []
            for k in range(count):
                subject = simulate_subject(template, (seed, split_code, k), source, target, DEFAULT_SETTINGS)
                folder = Path(split) / f"subject_{k:03d}"
                (staging / folder).mkdir(parents=True)
                entry = {}
                for key, name, array in (
                    ("image", source, subject.source),
                    ("label", target, subject.target),
                    ("mask", MASK_NAME, subject.mask),
                    ("lesion", LESION_NAME, subject.lesion),
                ):
                    _save(array, template.affine, staging / folder / f"{name}{_SUFFIX}")
                    entry[key] = (folder / f"{name}{_SUFFIX}").as_posix()
                entries.append(entry)
            datalist[split] = entries
        (staging / DATALIST_NAME).write_text(json.dumps(datalist, indent=2) + "\n")
        record = {
            "name": "PHMDiff demo data",
            "description": (
                f"Simulated paired brain MR ({source} -> {target}) from the {TEMPLATE_NAME}: tissue maps put "
                "through spin-echo / inversion-recovery signal equations, with random deformation, lesions, "
                "tissue-property fields, misregistration, bias and Rician noise. Not patient data; not for "
                "clinical use. See bundle/docs/data_license.txt for the template's copyright notice."
            ),
            "source": source,
            "target": target,
            "seed": int(seed),
            "spacing_mm": float(spacing),
            "shape": list(template.shape),
            "affine": template.affine.tolist(),
            **{name: int(value) for name, value in counts.items()},
            "generator": "custom.data.demo.generate_demo_dataset",
            "template": TEMPLATE_NAME,
            "tissue_properties": {k: asdict(v) for k, v in TISSUE_PROPERTIES.items()},
            "sequences": {k: asdict(v) for k, v in SEQUENCES.items()},
            "settings": asdict(DEFAULT_SETTINGS),
        }
        (staging / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes the folder private; a dataset is meant to be read by others
        os.replace(staging, output_dir)  # atomic; replaces an empty folder, fails on a non-empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir / DATALIST_NAME


def main(output_dir: str, **kwargs) -> None:
    """Command-line entry: generate the demo dataset and print where its datalist went; the options are the
    keyword arguments of :func:`generate_demo_dataset` (``--source flair --num_training 8 ...``)."""
    try:
        print(f"datalist: {generate_demo_dataset(output_dir, **kwargs)}")
    except (ValueError, FileExistsError) as err:  # a bad argument: one line, not a traceback
        raise SystemExit(f"{type(err).__name__}: {err}") from None


if __name__ == "__main__":
    import fire

    fire.Fire(main)
