"""Datalists for the bundle: the demo data on first use, and loading with errors that name the file and key."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatasetError", "prepare_dataset", "load_datalist", "find_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".img")


class DatasetError(ValueError):
    """A dataset folder or datalist the bundle cannot use; the message names the config id, path and problem."""


def prepare_dataset(
    dataset_dir: str | os.PathLike,
    demo_dataset_dir: str | os.PathLike,
    source_contrast: str = "t1w",
    target_contrast: str = "t2w",
    datalist_name: str = "datalist.json",
) -> str:
    """Return the datalist of ``dataset_dir``, generating the demo data there on first use.

    The demo data are created only when ``dataset_dir`` is the bundle's default ``demo_dataset_dir`` and does
    not exist yet; a folder the user points to is never written to.

    Args:
        dataset_dir: config id ``dataset_dir``.
        demo_dataset_dir: config id ``demo_dataset_dir``, where the demo data live.
        source_contrast: config id ``source_contrast``, used when generating the demo data.
        target_contrast: config id ``target_contrast``, used when generating the demo data.
        datalist_name: file name of the datalist inside ``dataset_dir``.
    """
    dataset = Path(dataset_dir).expanduser().resolve()
    if dataset == Path(demo_dataset_dir).expanduser().resolve():
        from .demo import CONTRASTS, generate_demo_dataset  # the generator needs nilearn: import on demand

        for name, value in (("source_contrast", source_contrast), ("target_contrast", target_contrast)):
            if value not in CONTRASTS:
                raise DatasetError(f"{name}={value!r} is not a demo contrast; choose one of {CONTRASTS}.")
        if not dataset.exists():
            generate_demo_dataset(dataset, source=source_contrast, target=target_contrast)
        _check_demo_contrasts(dataset, source_contrast, target_contrast)
    elif not dataset.is_dir():
        raise DatasetError(f"dataset_dir='{dataset_dir}' does not exist or is not a folder.")
    datalist = dataset / datalist_name
    if not datalist.is_file():
        raise DatasetError(f"dataset_dir='{dataset_dir}' has no datalist '{datalist_name}'.")
    return str(datalist)


def _check_demo_contrasts(dataset: Path, source: str, target: str) -> None:
    """Refuse a demo folder generated for other contrasts instead of silently training on them."""
    record = dataset / "dataset.json"
    if not record.is_file():
        return
    made = json.loads(record.read_text())
    if (made.get("source"), made.get("target")) != (source, target):
        raise DatasetError(
            f"demo data in '{dataset}' were generated for {made.get('source')} -> {made.get('target')}, but "
            f"source_contrast={source!r} and target_contrast={target!r}; set dataset_dir to another folder."
        )


def load_datalist(
    datalist_file: str | os.PathLike,
    data_list_key: str = "training",
    base_dir: str | os.PathLike | None = None,
    required_keys: Sequence[str] = ("image", "label"),
) -> list[dict]:
    """Load one list of a MONAI-style datalist JSON, with paths made absolute and checked to exist.

    Args:
        datalist_file: the JSON file, e.g. ``{"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}``.
        data_list_key: which list to load (``training``, ``validation``, ``test``).
        base_dir: folder that relative paths start from; defaults to the datalist's folder.
        required_keys: keys every entry must have; each names an existing file.
    """
    path = Path(datalist_file)
    if not path.is_file():
        raise DatasetError(f"datalist '{path}' does not exist.")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"datalist '{path}' is not valid JSON: {err}.") from None
    if not isinstance(content, dict) or data_list_key not in content:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DatasetError(f"datalist '{path}' has no list '{data_list_key}' (found: {found}).")
    entries = content[data_list_key]
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"datalist '{path}': '{data_list_key}' must be a non-empty list of entries.")
    base = Path(base_dir) if base_dir is not None else path.parent
    items = []
    for index, entry in enumerate(entries):
        where = f"datalist '{path}', {data_list_key}[{index}]"
        if isinstance(entry, str) and tuple(required_keys) == ("image",):
            entry = {"image": entry}
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} must be an object with keys {list(required_keys)}, got {entry!r}.")
        missing = [k for k in required_keys if k not in entry]
        if missing:
            raise DatasetError(f"{where} lacks the key(s) {missing}.")
        item = dict(entry)
        for key, value in entry.items():
            if isinstance(value, str) and (key in required_keys or value.endswith(IMAGE_SUFFIXES)):
                item[key] = str(value if os.path.isabs(value) else base / value)
        for key in required_keys:
            if not os.path.exists(item[key]):
                raise DatasetError(f"{where}: {key} file '{item[key]}' does not exist.")
        items.append(item)
    return items


def find_images(
    dataset_dir: str | os.PathLike,
    datalist_name: str = "datalist.json",
    data_list_key: str = "test",
    exclude: str | os.PathLike | None = None,
) -> list[dict]:
    """Inputs for inference: the ``image`` entries of the folder's datalist list ``data_list_key`` if it has one,
    else every image file below the folder (sorted) except those below ``exclude``, each as ``{"image": path}``.

    Args:
        dataset_dir: config id ``dataset_dir``; a folder, or a single image file.
        datalist_name: datalist file name looked for inside the folder.
        data_list_key: which datalist list to run on.
        exclude: a folder whose files a folder scan skips: config id ``output_dir``, so that the outputs of an
            earlier run into a subfolder are not taken as inputs; a scan of that very folder is refused.
    """
    root = Path(dataset_dir)
    if root.is_file():
        return [{"image": str(root)}]
    if not root.is_dir():
        raise DatasetError(f"dataset_dir='{dataset_dir}' does not exist.")
    datalist = root / datalist_name
    if datalist.is_file():
        return [{"image": e["image"]} for e in load_datalist(datalist, data_list_key, required_keys=("image",))]
    skipped = None
    if exclude is not None and Path(exclude).resolve().is_relative_to(root.resolve()):
        skipped = Path(exclude).resolve().relative_to(root.resolve())
        if skipped == Path():
            raise DatasetError(
                f"output_dir='{exclude}' is dataset_dir: the outputs would be found as inputs by the next run; "
                f"choose another output folder, or list the inputs in '{datalist}'."
            )
    files = sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(IMAGE_SUFFIXES)
        and not (skipped and p.relative_to(root).is_relative_to(skipped))
    )
    if not files:
        raise DatasetError(f"dataset_dir='{dataset_dir}' holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    return [{"image": f} for f in files]
