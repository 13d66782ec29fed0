from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from parameterized import parameterized

from custom.transforms import (
    CheckImage,
    CheckImaged,
    CheckPaird,
    ForegroundSlicesd,
    ImageCheckError,
    ModalityDenormalize,
    ModalityNormalize,
    ModalityNormalized,
    RandForegroundSlicesd,
)


def _volume(shape=(1, 20, 24, 30), filename="/data/sub-01_T1w.nii.gz") -> MetaTensor:
    img = torch.rand(shape) * 100.0
    return MetaTensor(img, meta={"filename_or_obj": filename})


def test_mr_normalisation_uses_robust_percentiles():
    img = torch.linspace(0.0, 1000.0, 1001)[None]
    img[0, -1] = 1e6  # one outlier must not squash the range
    out = ModalityNormalize("MR", 0.5, 99.5)(img)
    assert float(out.min()) == -1.0 and float(out.max()) == 1.0
    assert abs(float(out[0, 500])) < 0.02


def test_ct_window_round_trips_within_window():
    hu = torch.tensor([[-1000.0, -200.0, 0.0, 400.0, 2000.0]])
    normalised = ModalityNormalize("CT", hu_window=(-1000, 2000))(hu)
    assert torch.allclose(normalised, torch.tensor([[-1.0, -0.4666667, -0.3333333, -0.0666667, 1.0]]))
    restored = ModalityDenormalize("CT", hu_window=(-1000, 2000))(normalised)
    assert torch.allclose(restored, hu, atol=1e-3)


def test_mr_denormalisation_maps_to_output_range():
    out = ModalityDenormalize("MR", mr_range=(0, 1000))(torch.tensor([[-1.0, 0.0, 1.0, 3.0]]))
    assert torch.allclose(out, torch.tensor([[0.0, 500.0, 1000.0, 1000.0]]))


@parameterized.expand(
    [
        ({"modality": "PET"}, "modality='PET'"),
        ({"lower_percentile": 90, "upper_percentile": 10}, "lower_percentile=90"),
        ({"modality": "CT", "hu_window": (100, -100)}, "hu_window"),
    ]
)
def test_normalisation_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModalityNormalize(**kwargs)


def test_dictionary_wrapper_only_touches_its_keys():
    data = {"image": torch.rand(1, 8, 8) * 50, "label": torch.rand(1, 8, 8) * 50}
    out = ModalityNormalized(keys="image", modality="MR")(data)
    assert float(out["image"].min()) >= -1.0 and float(out["image"].max()) <= 1.0
    assert out["label"] is data["label"]


@parameterized.expand(
    [
        ("4-D", torch.rand(1, 4, 4, 4, 3), "4-D image"),
        ("channels", torch.rand(2, 4, 4, 4), "2 channels"),
        ("nan", torch.tensor([[[[0.0, float("nan")], [1.0, 2.0]]]]), "NaN or infinite"),
        ("constant", torch.full((1, 4, 4, 4), 7.0), "constant"),
    ]
)
def test_check_image_names_file_and_problem(_, array, message):
    img = MetaTensor(array, meta={"filename_or_obj": "/data/bad_scan.nii.gz"})
    with pytest.raises(ImageCheckError, match=message) as err:
        CheckImaged(keys="image", spatial_dims=3)({"image": img})
    assert "/data/bad_scan.nii.gz" in str(err.value)


def test_check_image_accepts_good_volume():
    img = _volume()
    assert CheckImage(spatial_dims=3)(img) is img


def test_check_pair_refuses_shape_and_affine_mismatch():
    a, b = _volume(filename="a.nii.gz"), _volume(filename="b.nii.gz")
    CheckPaird(keys=["image", "label"])({"image": a, "label": b})
    with pytest.raises(ImageCheckError, match="differ in shape"):
        CheckPaird(keys=["image", "label"])({"image": a, "label": _volume((1, 20, 24, 31))})
    shifted = _volume(filename="b.nii.gz")
    shifted.affine[0, 3] = 2.0
    with pytest.raises(ImageCheckError, match="affines differ by up to 2") as err:
        CheckPaird(keys=["image", "label"])({"image": a, "label": shifted})
    assert "a.nii.gz" in str(err.value) and "b.nii.gz" in str(err.value)


def _brain_like_pair():
    volume = -torch.ones(1, 16, 18, 20)
    volume[:, 4:12, 4:14, 5:15] = 0.5  # foreground only in slices 5..14 along the last axis
    return {"image": volume, "label": volume * 2}


def test_random_slices_come_from_foreground_and_keep_pairs_aligned():
    sampler = RandForegroundSlicesd(keys=["image", "label"], num_slices=50, spatial_axis=2)
    sampler.set_random_state(0)
    samples = sampler(_brain_like_pair())
    assert len(samples) == 50
    indices = {s["slice_index"] for s in samples}
    assert indices <= set(range(5, 15)) and len(indices) > 5
    for s in samples:
        assert s["image"].shape == (1, 16, 18)
        assert torch.equal(s["label"], s["image"] * 2)


def test_fixed_slices_are_deterministic_and_spread():
    sampler = ForegroundSlicesd(keys=["image", "label"], num_slices=3, spatial_axis=2)
    first = [s["slice_index"] for s in sampler(_brain_like_pair())]
    assert first == [s["slice_index"] for s in sampler(_brain_like_pair())]
    assert len(set(first)) == 3 and min(first) > 5 and max(first) < 14


def test_slicer_rejects_2d_input():
    with pytest.raises(ValueError, match="3-D volume"):
        ForegroundSlicesd(keys="image", num_slices=1)({"image": torch.rand(1, 8, 8)})


def test_slicer_along_other_axes():
    data = {"image": torch.rand(1, 6, 7, 8)}
    out = RandForegroundSlicesd(keys="image", num_slices=2, spatial_axis=0, threshold=-2)(data)
    assert out[0]["image"].shape == (1, 7, 8)
    assert np.isclose(float(out[0]["image"].mean()), float(data["image"][0, out[0]["slice_index"]].mean()))


def test_resample_to_spacing_keeps_plain_entries_beside_a_nifti(tmp_path):
    """MONAI Label adds the string ``image_path``; MONAI's Spacingd would call ``.update`` on it for NIfTI input."""
    import nibabel as nib
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    from custom.transforms import ResampleToSpacingd

    path = str(tmp_path / "volume.nii.gz")
    nib.save(nib.Nifti1Image(np.random.rand(10, 12, 8).astype(np.float32), np.eye(4)), path)
    data = EnsureChannelFirstd("image")(LoadImaged("image")({"image": path, "image_path": path}))
    out = ResampleToSpacingd("image", pixdim=(2.0, 2.0, 2.0))(data)
    assert out["image"].shape == (1, 6, 6, 4) and out["image_path"] == path
    assert np.allclose(out["image"].pixdim, (2.0, 2.0, 2.0))


def test_background_from_source_blanks_only_what_lies_far_from_signal():
    """Empty slices above the anatomy get the background value; the anatomy, its margin and a dark hole inside it
    (ventricles in a FLAIR) keep the synthesis; the metadata that Invertd needs stays."""
    from monai.data import MetaTensor

    from custom.transforms import BackgroundFromSourced

    source = -torch.ones(1, 20, 20, 20)
    source[:, 5:15, 5:15, 2:10] = 0.5  # the anatomy fills slices 2..9
    source[:, 9:11, 9:11, 5:7] = -1.0  # a dark hole inside it
    pred = MetaTensor(torch.rand(1, 20, 20, 20), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = BackgroundFromSourced(keys="pred", margin=2)({"image": source, "pred": pred})["pred"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, pred.affine)
    assert torch.equal(out[:, 5:15, 5:15, 0:12], pred[:, 5:15, 5:15, 0:12])  # anatomy, hole, margin along z
    assert torch.equal(out[:, 3:17, 5:15, 2:10], pred[:, 3:17, 5:15, 2:10])  # margin along x
    assert (out[:, :, :, 12:] == -1).all() and (out[:, :3] == -1).all()  # beyond the margin
    with pytest.raises(ValueError, match="differ in size"):
        BackgroundFromSourced(keys="pred")({"image": source, "pred": pred[:, :10]})
