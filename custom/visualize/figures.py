"""Figures for the bundle's docs: training curves from TensorBoard logs and a grid of synthesised test slices.

Command line::

    python -m custom.visualize.figures curves --tensorboard_dir DIR --output curves.png
    python -m custom.visualize.figures grid --dataset_dir DATA --synth_dir OUT --output grid.png
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["plot_training_curves", "save_synthesis_grid"]


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
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def _display(volume: np.ndarray) -> np.ndarray:
    low, high = np.percentile(volume, (0.5, 99.5))
    return np.clip((volume - low) / max(high - low, 1e-6), 0, 1)


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
        name = relative.name.split(".")[0]
        synth_path = Path(synth_dir) / relative.parent / f"{name}_{postfix}.nii.gz"
        if not synth_path.is_file():
            raise FileNotFoundError(f"no synthesis '{synth_path}' for '{entry['image']}'; run inference first.")
        source, target, synth = (
            _display(nib.load(p).get_fdata())
            for p in (Path(dataset_dir) / entry["image"], Path(dataset_dir) / entry["label"], synth_path)
        )
        z = source.shape[2] // 2
        if "lesion" in entry:
            area = (np.asarray(nib.load(Path(dataset_dir) / entry["lesion"]).dataobj) > 0).sum(axis=(0, 1))
            z = int(area.argmax()) if area.max() > 0 else z
        for ax, image, title in zip(
            row, (source, synth, target, np.abs(synth - target)), ("source", "synthesis", "target", "|error|")
        ):
            ax.imshow(np.rot90(image[:, :, z]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{title} ({relative.parent.name}, z={z})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


if __name__ == "__main__":
    import fire

    fire.Fire({"curves": plot_training_curves, "grid": save_synthesis_grid})
