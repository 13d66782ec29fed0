"""Figures for the bundle's docs: training curves from TensorBoard logs, a grid of synthesised test slices and the
three orthogonal planes of one synthesised volume. A dev tool (needs matplotlib, from requirements-dev.txt), not
part of the bundle.

Command line::

    python benchmarks/figures.py curves --tensorboard_dir DIR --output curves.png
    python benchmarks/figures.py grid --dataset_dir DATA --synth_dir OUT --output grid.png
    python benchmarks/figures.py planes --dataset_dir DATA --synth_dir OUT --output planes.png
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from custom.data.simulation import robust_normalise

__all__ = ["plot_training_curves", "save_synthesis_grid", "save_orthogonal_planes"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _scalars(tensorboard_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar series in the event files of a folder, as (steps, values), merged over files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for events in sorted(Path(tensorboard_dir).glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            series.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return {tag: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)])) for tag, v in series.items()}


def plot_training_curves(tensorboard_dir: str, output: str) -> str:
    """Plot the training loss (per iteration, with a running mean) and the validation metrics (per epoch).

    Args:
        tensorboard_dir: the training run's TensorBoard folder (config id ``tensorboard_dir``).
        output: PNG file to write.
    """
    scalars = _scalars(tensorboard_dir)
    if "train_loss_iteration" not in scalars:
        raise ValueError(f"no 'train_loss_iteration' scalars in the TensorBoard logs of '{tensorboard_dir}'.")
    metrics = [tag for tag in ("val_ssim", "val_psnr", "val_mae") if tag in scalars]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.4))
    axes = np.atleast_1d(axes)
    steps, loss = scalars["train_loss_iteration"]
    window = max(1, len(loss) // 50)
    axes[0].plot(steps, loss, color="0.75", linewidth=0.6, label="per iteration")
    axes[0].plot(steps[window - 1 :], np.convolve(loss, np.ones(window) / window, "valid"), label=f"mean of {window}")
    axes[0].set(xlabel="iteration", ylabel="training loss", yscale="log", title="training loss")
    axes[0].legend()
    for ax, tag in zip(axes[1:], metrics):
        epochs, values = scalars[tag]
        ax.plot(epochs, values, marker="o")
        ax.set(xlabel="epoch", title=f"validation {tag[4:].upper()} (EMA weights)")
    return _save(plt, fig, output)


def _display(volume: np.ndarray) -> np.ndarray:
    """The volume's 0.5/99.5 percentiles mapped to 0/1 (clipped), as the bundle normalises its inputs."""
    return (robust_normalise(volume) + 1.0) / 2.0


def save_synthesis_grid(
    dataset_dir: str, synth_dir: str, output: str, data_list_key: str = "test", postfix: str = "synth"
) -> str:
    """A grid with one row per test subject: source | synthesis | target | |synthesis − target|, on the axial slice
    with the most lesion where the datalist names a ``lesion`` mask with any lesion, else the mid-axial slice.

    Args:
        dataset_dir: folder with ``datalist.json`` (config id ``dataset_dir``).
        synth_dir: where inference wrote its outputs (config id ``output_dir`` of ``inference.json``).
        output: PNG file to write.
        data_list_key: datalist list whose subjects are shown.
        postfix: the output postfix of the inference's saver.
    """
    entries = json.loads((Path(dataset_dir) / "datalist.json").read_text())[data_list_key]
    plt = _pyplot()
    fig, axes = plt.subplots(len(entries), 4, figsize=(9, 2.6 * len(entries)), squeeze=False)
    for row, entry in zip(axes, entries):
        relative = Path(entry["image"])
        source, synth, target = _subject_volumes(dataset_dir, synth_dir, entry, postfix)
        z = _lesion_centre(dataset_dir, entry, source.shape)[2]
        for ax, image, title in zip(
            row, (source, synth, target, np.abs(synth - target)), ("source", "synthesis", "target", "|error|")
        ):
            _show(ax, image[:, :, z], f"{title} ({relative.parent.name}, z={z})")
    return _save(plt, fig, output)


def _show(ax, plane: np.ndarray, title: str, aspect: float = 1.0) -> None:
    """One grey panel, RAS array axes turned so that anterior (axial) or superior (coronal, sagittal) is up."""
    ax.imshow(np.rot90(plane), cmap="gray", vmin=0, vmax=1, aspect=aspect)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _save(plt, fig, output: str) -> str:
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _subject_volumes(dataset_dir: str, synth_dir: str, entry: dict, postfix: str) -> tuple[np.ndarray, ...]:
    """(source, synthesis, target) of one datalist entry, each scaled to [0, 1] for display."""
    relative = Path(entry["image"])
    synth_path = Path(synth_dir) / relative.parent / f"{relative.name.split('.')[0]}_{postfix}.nii.gz"
    if not synth_path.is_file():
        raise FileNotFoundError(f"no synthesis '{synth_path}' for '{entry['image']}'; run inference first.")
    paths = (Path(dataset_dir) / entry["image"], synth_path, Path(dataset_dir) / entry["label"])
    return tuple(_display(nib.load(p).get_fdata()) for p in paths)


def _lesion_centre(dataset_dir: str, entry: dict, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The voxel where the most lesion crosses in each axis (the volume centre without a lesion mask)."""
    centre = [n // 2 for n in shape[:3]]
    if "lesion" in entry:
        lesion = np.asarray(nib.load(Path(dataset_dir) / entry["lesion"]).dataobj) > 0
        if lesion.any():
            centre = [int(lesion.sum(axis=tuple(a for a in range(3) if a != axis)).argmax()) for axis in range(3)]
    return centre[0], centre[1], centre[2]


def save_orthogonal_planes(
    dataset_dir: str, synth_dir: str, output: str, subject: int = 0, data_list_key: str = "test", postfix: str = "synth"
) -> str:
    """Axial, coronal and sagittal planes through one synthesised volume (through its lesion where the datalist
    names a mask), rows source | synthesis | target: slice-by-slice synthesis shows its slice-to-slice consistency
    in the coronal and sagittal planes (stripes where neighbouring slices disagree).

    Args:
        dataset_dir, synth_dir, data_list_key, postfix: as :func:`save_synthesis_grid`.
        output: PNG file to write.
        subject: index of the subject in the datalist list.
    """
    entry = json.loads((Path(dataset_dir) / "datalist.json").read_text())[data_list_key][subject]
    volumes = _subject_volumes(dataset_dir, synth_dir, entry, postfix)
    x, y, z = _lesion_centre(dataset_dir, entry, volumes[0].shape)
    zooms = nib.load(Path(dataset_dir) / entry["image"]).header.get_zooms()[:3]
    planes = (
        ("axial", lambda v: v[:, :, z], zooms[1] / zooms[0]),
        ("coronal", lambda v: v[:, y, :], zooms[2] / zooms[0]),
        ("sagittal", lambda v: v[x, :, :], zooms[2] / zooms[1]),
    )
    plt = _pyplot()
    fig, axes = plt.subplots(3, 3, figsize=(8, 8), squeeze=False)
    for row, volume, name in zip(axes, volumes, ("source", "synthesis", "target")):
        for ax, (plane, cut, aspect) in zip(row, planes):
            _show(ax, cut(volume), f"{name}, {plane}", aspect)
    return _save(plt, fig, output)


if __name__ == "__main__":
    import fire

    fire.Fire({"curves": plot_training_curves, "grid": save_synthesis_grid, "planes": save_orthogonal_planes})
