"""Issue 15, NIfTI side: outputs keep the input's shape and header, thin inputs are sliced in their acquisition
plane, inputs the model is not meant for are skipped with the reason, and a run prints no library noise.

Cases built like the real ones: the demo T1w (MNI template space, sform and qform code 4) as one axial slice, a
single sagittal slice stored as dcm2niix stores it ((rows, columns, 1), the third axis along R-L), a thin coronal
slab; a head CT in HU (the MNI head with literature HU for brain, CSF, skull, scalp and air); a whole head MR with
skull and scalp (``tests/test_dicom_eligibility.py``'s phantom). The bundle runs in-process as
``tests/test_reliability_inputs.py`` runs it; the command line once, for the exit status and the notices.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Identityd
from scipy import ndimage as ndi

from custom.bundle import ConfigError, check_overrides
from custom.engines import SynthesisError
from custom.io.eligibility import MAX_SKULL_FRACTION
from custom.transforms import CheckEligible, IneligibleImageError
from tests.demo_subject import demo_test_subject
from tests.test_dicom_eligibility import LAYERS, _anatomy, head_phantom
from tests import test_hostile_use as hostile
from tests.test_hostile_use import workflow
from tests.test_reliability_inputs import CONFIGS, cli, failure

REPO = Path(__file__).resolve().parents[1]
#: Hounsfield units (literature means) of the tissues of tests/test_dicom_eligibility.py's head; air -1000.
HU = {"gm": 40.0, "wm": 25.0, "csf": 8.0, "bone": 1200.0, "marrow": 400.0, "muscle": 50.0, "fat": -100.0}


checkpoint, keep_excepthook = hostile.checkpoint, hostile.keep_excepthook  # tiny weights; the excepthook restored


def demo() -> nib.Nifti1Image:
    """The demo T1w: (99, 117, 95) RAS, 2 mm, sform and qform code 4 (MNI template space), units mm."""
    return nib.load(demo_test_subject() / "t1w.nii.gz")


def save(path: Path, data: np.ndarray, affine: np.ndarray, codes=(4, 4), units: int = 2) -> Path:
    image = nib.Nifti1Image(np.ascontiguousarray(data, np.float32), affine)
    image.set_sform(affine, code=codes[0])
    image.set_qform(affine, code=codes[1])
    image.header["xyzt_units"] = units
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def rows(output: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in json.loads((output / "report.json").read_text())["images"]}


def seen_by(flow) -> set[tuple[int, ...]]:
    """The spatial shapes of the slices the network is given in ``flow``'s run (filled as it runs)."""
    seen: set[tuple[int, ...]] = set()
    flow.parser.get_parsed_content("network").register_forward_pre_hook(
        lambda _, args: seen.add(tuple(args[0].shape[2:]))
    )
    return seen


@functools.lru_cache(maxsize=1)
def head_ct() -> np.ndarray:
    """A head CT in HU on the MNI head (RAS, 2 mm): brain, CSF, skull (inner table, diploe, outer table), scalp,
    air; partial volume and 5 HU noise. 82 % of its voxels are negative (air, fat), the real one 72 %."""
    gm, wm, mask, distance = _anatomy()
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    image = np.where(mask, gm * HU["gm"] + wm * HU["wm"] + csf * HU["csf"], -1000.0).astype(np.float32)
    inner = 0.0
    for tissue, outer in LAYERS:
        image[(distance > inner) & (distance <= outer)] = HU[tissue]
        inner = outer
    n = [k // 2 for k in image.shape]
    image = image[: 2 * n[0], : 2 * n[1], : 2 * n[2]].reshape(n[0], 2, n[1], 2, n[2], 2).mean(axis=(1, 3, 5))
    return image + np.random.default_rng(0).normal(0.0, 5.0, image.shape).astype(np.float32)


def head_affine(shape) -> np.ndarray:
    """RAS, 2 mm voxels, centred."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = 1.0 - np.asarray(shape)
    return affine


# ------------------------------------------------------------------------------------ 1: shape and header kept


@pytest.mark.parametrize(
    "name, index, codes",
    [("axial_slice", np.s_[:, :, 47:48], (4, 4)), ("slab_aligned_scanner", np.s_[:, :, 40:48], (2, 1))],
)
def test_output_keeps_shape_and_header_codes(tmp_path, checkpoint, name, index, codes):
    """It came back as (X, Y) with sform/qform code 1 and no units: the (X, Y, 1) slice of an image in template
    space (code 4) lost its third axis and its space."""
    source = demo()
    path = save(tmp_path / "in" / f"{name}.nii.gz", np.asarray(source.dataobj)[index], source.affine, codes)
    workflow(tmp_path / "in", tmp_path / "out", checkpoint).run()
    written, given = nib.load(tmp_path / "out" / f"{name}_synth.nii.gz"), nib.load(path)
    assert written.shape == given.shape
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == codes
    assert written.header.get_xyzt_units() == given.header.get_xyzt_units() == ("mm", "unknown")
    np.testing.assert_allclose(written.affine, given.affine, atol=1e-4)


# ---------------------------------------------------------------------------- 1: sliced in the acquired plane


def sagittal(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` sagittal slices of the demo T1w as dcm2niix stores them: (A-P rows, I-S columns, slices R-L)."""
    source = demo()
    start = 49 - count // 2
    data = np.asarray(source.dataobj)[start : start + count].transpose(1, 2, 0)
    a = source.affine
    return data, np.c_[a[:, 1], a[:, 2], a[:, 0], a @ [start, 0, 0, 1]]


def coronal(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` coronal slices: (R-L columns, I-S rows, slices A-P)."""
    source = demo()
    start = 58 - count // 2
    data = np.asarray(source.dataobj)[:, start : start + count].transpose(0, 2, 1)
    a = source.affine
    return data, np.c_[a[:, 0], a[:, 2], a[:, 1], a @ [0, start, 0, 1]]


@pytest.mark.parametrize(
    "name, stack, expected",
    [
        ("single_sagittal_slice", lambda: sagittal(1), {(117, 95)}),  # was {(1, 117)}: one-pixel strips
        ("thin_coronal_slab", lambda: coronal(3), {(99, 95)}),  # was {(99, 3)}
        ("sagittal_volume_keeps_the_configured_axis", lambda: sagittal(10), {(10, 117)}),
    ],
)
def test_thin_input_is_sliced_in_its_acquisition_plane(tmp_path, checkpoint, name, stack, expected):
    data, affine = stack()
    path = save(tmp_path / "in" / f"{name}.nii.gz", data, affine, codes=(1, 1))
    flow = workflow(tmp_path / "in", tmp_path / "out", checkpoint)
    seen = seen_by(flow)
    flow.run()
    assert seen == expected
    written = nib.load(tmp_path / "out" / f"{name}_synth.nii.gz")
    assert written.shape == data.shape
    np.testing.assert_allclose(written.affine, nib.load(path).affine, atol=1e-4)


# ------------------------------------------------------------------------- 2: a CT in HU given as the MR source


def test_head_ct_given_as_mr_is_refused_naming_the_file(tmp_path):
    ct = head_ct()
    assert 0.6 < np.mean(ct < 0) < 0.9  # the real head CT of the issue: 72 %
    image = MetaTensor(
        torch.as_tensor(ct)[None],
        affine=torch.as_tensor(head_affine(ct.shape)),
        meta={"filename_or_obj": "/data/head_ct.nii.gz"},
    )
    with pytest.raises(
        IneligibleImageError,
        match=r"'/data/head_ct.nii.gz' is not eligible: \d+% of its voxels are "
        r"negative \(down to -1\d{3}(\.\d+)?\), but MR magnitude images have no negative values",
    ):
        CheckEligible("MR")(image)
    CheckEligible("MR", max_negative_fraction=None, max_skull_fraction=None)(image)  # the checks can be turned off
    CheckEligible("CT")(image)  # a CT source is not checked


def test_real_mr_passes_the_intensity_check():
    """The demo T1w and T2w, and the T1w resampled by a cubic spline (its undershoot gives negative values)."""
    for contrast in ("t1w", "t2w"):
        data = np.asarray(nib.load(demo_test_subject() / f"{contrast}.nii.gz").dataobj, np.float32)
        resampled = ndi.zoom(data, 1.3, order=3)
        assert resampled.min() < 0
        for volume in (data, resampled):
            CheckEligible("MR", max_skull_fraction=None)(MetaTensor(torch.as_tensor(volume)[None]))


def test_head_ct_in_a_batch_is_skipped_and_alone_exits_non_zero(tmp_path, checkpoint):
    ct = save(tmp_path / "in" / "head_ct.nii.gz", head_ct(), head_affine(head_ct().shape), codes=(1, 1))
    source = demo()
    save(tmp_path / "in" / "t1w.nii.gz", np.asarray(source.dataobj)[:, :, 40:52], source.affine)
    workflow(tmp_path / "in", tmp_path / "out", checkpoint).run()  # no error: nothing failed
    found = rows(tmp_path / "out")
    assert found["t1w.nii.gz"]["status"] == "written"
    assert found["head_ct.nii.gz"]["status"] == "skipped" and found["head_ct.nii.gz"]["output"] == ""
    assert found["head_ct.nii.gz"]["reason"].startswith(f"'{ct}' is not eligible: ")
    assert not (tmp_path / "out" / "head_ct_synth.nii.gz").exists()
    # alone: nothing eligible, a non-zero exit with the reason (the DICOM batch does so for a CT-only archive)
    error = failure(lambda: workflow(ct, tmp_path / "out2", checkpoint).run())
    assert isinstance(error, SynthesisError)
    assert str(error).startswith(
        f"NIfTI synthesis found no eligible image: 1 images, 0 written, 1 skipped, 0 failed "
        f"(first: '{ct}' is not eligible: "
    )


# -------------------------------------------------------------------------------------- 3: a head with skull


def test_head_with_skull_is_skipped_and_the_check_can_be_turned_off(tmp_path, checkpoint):
    head, brain = (head_phantom("t1w", skull)[:, :, 50:62] for skull in (True, False))
    affine = head_affine(head.shape)
    save(tmp_path / "in" / "head.nii.gz", head, affine, codes=(1, 1))
    save(tmp_path / "in" / "brain.nii.gz", brain, affine, codes=(1, 1))
    save(tmp_path / "in" / "head_sagittal_slice.nii.gz", head_phantom("t1w", True)[61:62], affine, codes=(1, 1))
    workflow(tmp_path / "in", tmp_path / "out", checkpoint).run()
    found = rows(tmp_path / "out")
    assert found["brain.nii.gz"]["status"] == "written"
    for name in ("head.nii.gz", "head_sagittal_slice.nii.gz"):
        assert found[name]["status"] == "skipped", found[name]
        assert re.search(
            r"is not eligible: a whole head with skull \(signal-free shell 0\.\d\d > 0\.09", found[name]["reason"]
        ), found[name]
    workflow(tmp_path / "in" / "head.nii.gz", tmp_path / "out2", checkpoint, max_skull_fraction=None).run()
    assert rows(tmp_path / "out2")["head.nii.gz"]["status"] == "written"


def test_none_typed_to_turn_a_check_off_is_refused_not_dropped(tmp_path):
    """MONAI's runner dropped ``--max_skull_fraction None`` without a word: the head was still skipped."""
    config = str(CONFIGS / "inference.json")
    with pytest.raises(ConfigError, match=r"--max_skull_fraction None: MONAI's runner drops None typed on the command"):
        check_overrides(["run", "--config_file", config, "--max_skull_fraction", "None"])
    (tmp_path / "args.json").write_text('{"max_skull_fraction": null}')
    check_overrides(["run", "--config_file", config, "--args_file", str(tmp_path / "args.json")])
    check_overrides(["run", "--config_file", config, "--max_skull_fraction", "1"])


def test_dicom_runs_judge_eligibility_themselves_with_the_same_id():
    """The DICOM batch skips ineligible series itself; the NIfTI checks would fail them a second time."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "inference_dicom.json")])
    assert isinstance(parser.get_parsed_content("eligibility_check"), Identityd)
    assert parser["dicom_synthesis#max_skull_fraction"] == "@max_skull_fraction"


def test_small_field_of_view_is_not_judged_as_a_head():
    """A crop smaller than a brain (here 40 mm of noise) shows no head outline: the skull check does not apply."""
    noise = np.random.default_rng(0).normal(100.0, 20.0, (10, 12, 8)).astype(np.float32)
    CheckEligible("MR")(MetaTensor(torch.as_tensor(noise)[None], affine=torch.diag(torch.tensor([4.0, 4.0, 4.0, 1.0]))))


@pytest.mark.parametrize("argument", ["max_negative_fraction", "max_skull_fraction"])
def test_fraction_arguments_are_checked(argument):
    with pytest.raises(ValueError, match=f"{argument}=1.5 must be a fraction"):
        CheckEligible("MR", **{argument: 1.5})


# ------------------------------------------------------------------------------- 4: no notices on every run


def test_cli_prints_no_library_notices_and_exits_non_zero_when_nothing_is_eligible(tmp_path, checkpoint):
    ct = save(tmp_path / "in" / "head_ct.nii.gz", head_ct(), head_affine(head_ct().shape), codes=(1, 1))
    result = cli(
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        str(checkpoint),
        "--network_def#preset",
        "T",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"SynthesisError: NIfTI synthesis found no eligible image: 1 images, 0 written, 1 skipped, "
        f"0 failed (first: '{ct}' is not eligible: "
    ), last
    printed = result.stdout + result.stderr
    for notice in ("nvImageCodec", "NvImgCodec", "Orientationd", "Traceback"):
        assert notice not in printed, printed[-3000:]


# ----------------------------------------------------------------------------------------------- 5: model card


def test_model_card_states_the_input_and_the_ids_that_exist():
    card = (REPO / "bundle" / "docs" / "README.md").read_text()
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    for words in ("skull-stripped", "2 mm", "max_skull_fraction", "max_negative_fraction", "skipped"):
        assert words in card, words
    assert parser["max_skull_fraction"] == MAX_SKULL_FRACTION
    assert f"`max_skull_fraction` ({MAX_SKULL_FRACTION:g})" in card
    assert f"`max_negative_fraction` ({parser['max_negative_fraction']:g})" in card
