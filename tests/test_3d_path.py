"""The 3-D configuration (``train_3d.json`` / ``inference_3d.json`` overlays): PHMDiff with ``spatial_dims=3`` trained
on random crops and applied to whole volumes through MONAI's ``SlidingWindowInferer``, end to end on a small case."""

from __future__ import annotations

import ast

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from custom.data import generate_demo_dataset
from tests.test_bundle_workflows import CONFIGS, TINY, assert_trained, bundle, succeeded

TRAIN_3D = str([str(CONFIGS / "train.json"), str(CONFIGS / "train_3d.json")])  # a list, as the CLI takes it
INFERENCE_3D = str([str(CONFIGS / "inference.json"), str(CONFIGS / "inference_3d.json")])

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "pairs"
    generate_demo_dataset(folder, num_training=2, num_validation=1, num_test=1, spacing=4.0)
    return folder


def parser(config_files: str, **overrides) -> ConfigParser:
    config = ConfigParser()
    config.read_config(ast.literal_eval(config_files))
    config.update(overrides)
    return config


def test_training_crops_have_the_roi_size(dataset):
    config = parser(TRAIN_3D, dataset_dir=str(dataset), output_dir=str(dataset.parent / "unused"))
    item = config.get_parsed_content("train#dataset#data")[0]
    samples = config.get_parsed_content("train#preprocessing")(item)
    assert len(samples) == config["crops_per_volume"]
    for sample in samples:
        assert sample["image"].shape == sample["label"].shape == (1, *config["roi_size"])
        assert float((sample["image"] > -0.99).float().mean()) > 0.25  # within the head's bounding box


def test_train_then_infer_whole_volume_on_its_own_grid(dataset, tmp_path):
    out = tmp_path / "train"
    succeeded(
        bundle(
            "training",
            "--config_file",
            TRAIN_3D,
            *TINY,
            "--crops_per_volume",
            "2",
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(out),
            "--train#trainer#max_epochs",
            "1",
        )
    )
    assert_trained(torch.load(out / "checkpoints" / "model.pt", weights_only=True), spatial_dims=3)
    assert (out / "validation.png").stat().st_size > 0  # the middle axial slice of a sliding-window synthesis

    inferer = parser(INFERENCE_3D).get_parsed_content("inferer")
    assert isinstance(inferer, SlidingWindowInferer)
    infer_dir = tmp_path / "infer"
    succeeded(
        bundle(
            "--config_file",
            INFERENCE_3D,
            *TINY,
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(infer_dir),
            "--ckpt_path",
            str(out / "checkpoints" / "model.pt"),
            "--spacing",
            "[4.0, 4.0, 4.0]",
        )
    )
    (written,) = infer_dir.rglob("*_synth.nii.gz")
    source = nib.load(next(dataset.rglob(written.name.replace("_synth", ""))))
    synth = nib.load(written)
    assert synth.shape == source.shape and np.allclose(synth.affine, source.affine, atol=1e-4)
    values = synth.get_fdata()
    assert np.isfinite(values).all() and values.std() > 0
