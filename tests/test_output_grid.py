"""A clinical-style input (0.9 × 0.9 × 5 mm, axial or oblique) comes back from ``inference.json`` on its own voxel
grid and in register with the anatomy: the synthesis, scored on that grid, follows the target resampled to it."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage, SpatialResample

from tests.demo_subject import demo_test_subject
from tests.test_reliability_inputs import workflow

SPACING = np.array([0.9, 0.9, 5.0])

pytestmark = pytest.mark.slow


def clinical_grid(reference_affine: np.ndarray, reference_shape, degrees: float) -> tuple[np.ndarray, list[int]]:
    """A ``SPACING`` grid turned by ``degrees`` about the left-right axis, covering the reference field of view."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    extent = np.abs(reference_affine[:3, :3]) @ np.asarray(reference_shape, np.float64)  # mm along x, y, z
    size = [int(np.ceil(e / s)) for e, s in zip(extent, SPACING)]
    centre = reference_affine[:3, :3] @ ((np.asarray(reference_shape) - 1) / 2) + reference_affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(size) - 1) / 2)
    return affine, size


@pytest.mark.parametrize("degrees", [0.0, 15.0])
def test_anisotropic_input_comes_back_on_its_own_grid_in_register(tmp_path, degrees):
    subject = demo_test_subject()
    load = LoadImage(image_only=True, ensure_channel_first=True)
    images = {name: load(subject / f"{name}.nii.gz") for name in ("t1w", "t2w", "brain_mask")}
    affine, size = clinical_grid(np.asarray(images["t1w"].affine), images["t1w"].shape[1:], degrees)
    resample = SpatialResample()
    on_grid = {
        name: resample(
            image,
            dst_affine=torch.as_tensor(affine),
            spatial_size=size,
            mode="nearest" if name == "brain_mask" else "bilinear",
        )[0].numpy()
        for name, image in images.items()
    }
    dataset = tmp_path / "clinical"
    dataset.mkdir()
    nib.save(nib.Nifti1Image(on_grid["t1w"].astype(np.float32), affine), dataset / "t1w.nii.gz")

    workflow(dataset, tmp_path / "out").run()  # the shipped weights: the claim is about the real model

    (written,) = (tmp_path / "out").rglob("*_synth.nii.gz")
    synth = nib.load(written)
    assert synth.shape == tuple(size)
    np.testing.assert_allclose(synth.affine, affine, atol=1e-4)
    brain = on_grid["brain_mask"] > 0
    correlation = np.corrcoef(synth.get_fdata()[brain], on_grid["t2w"][brain])[0, 1]
    assert correlation > 0.6, correlation  # a flipped or shifted output scores near 0


def test_slices_are_kept_and_resampled_in_plane_only(tmp_path):
    """``spacing`` [2, 2, 0]: the network sees every input slice at the 2 mm in-plane spacing it was trained at."""
    image = LoadImage(image_only=True, ensure_channel_first=True)(demo_test_subject() / "t1w.nii.gz")
    affine, size = clinical_grid(np.asarray(image.affine), image.shape[1:], 0.0)
    clinical = SpatialResample()(image, dst_affine=torch.as_tensor(affine), spatial_size=size)[0].numpy()
    nib.save(nib.Nifti1Image(clinical.astype(np.float32), affine), tmp_path / "t1w.nii.gz")
    flow = workflow(tmp_path, tmp_path / "out")
    seen = flow.parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "t1w.nii.gz")})["image"]
    np.testing.assert_allclose(seen.pixdim, [2.0, 2.0, SPACING[2]], atol=1e-4)
    assert seen.shape[-1] == size[2]
