"""Tests of the embedded demo data simulated from the MNI ICBM152 2009a template (custom.data.demo)."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized
from scipy import ndimage as ndi

from custom.data import demo
from custom.data.demo import generate_demo_dataset
from custom.data.simulation import (
    DEFAULT_SETTINGS,
    MEAN_SUBJECT,
    load_template,
    pointwise_mapping_psnr,
    pointwise_remap,
    robust_normalise,
    simulate_subject,
)

SPACING = 2.0  # the default: the reported figures are at the spacing the bundle trains on
COARSE = 6.0  # for datasets that only check bookkeeping
PURE = 0.95  # tissue fraction of a "pure" voxel
# the docs (bundle/docs/README.md, Data and Results) quote "about 20 dB" for the best pointwise mapping fitted on a
# test subject itself (measured 20.11 dB on the first test subject): the bound a change of the simulation must keep
ORACLE_RANGE_DB = (19.0, 21.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """One tiny dataset (1 + 1 + 1 subjects, T1w -> T2w at 2 mm) shared by the tests."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", num_training=1, num_validation=1, num_test=1)


@pytest.fixture(scope="module")
def template():
    return load_template(SPACING)


@functools.lru_cache(maxsize=1)
def _mean_subject() -> dict[str, np.ndarray]:
    """The template itself put through the physics: every contrast, no variability."""
    template = load_template(SPACING)
    images = {}
    for source, target in (("t1w", "t2w"), ("pdw", "flair")):
        pair = simulate_subject(template, (0, 0, 0), source, target, MEAN_SUBJECT)
        images.update({source: pair.source, target: pair.target})
    return images


@functools.lru_cache(maxsize=1)
def _pure_tissue() -> dict[str, np.ndarray]:
    template = load_template(SPACING)
    grid = np.indices(template.shape, dtype=np.float32) * np.float32(template.step)
    fractions = {k: ndi.map_coordinates(template.maps[k], grid, order=1) for k in ("wm", "gm", "csf")}
    return {k: v > PURE for k, v in fractions.items()}


@pytest.fixture(scope="module")
def mean_subject():
    return _mean_subject()


def _load(dataset: Path, entry: dict, key: str) -> nib.Nifti1Image:
    return nib.load(dataset.parent / entry[key])


# ---------------------------------------------------------------------------------------------------------
# anatomy and physics
# ---------------------------------------------------------------------------------------------------------


def test_template_grid(template):
    assert template.shape == (99, 117, 95)
    np.testing.assert_allclose(template.affine, [[2, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]])


def test_t1w_correlates_with_template_t1(template, mean_subject, dataset):
    brain = template.t1_reference > 0.2
    r_mean = np.corrcoef(mean_subject["t1w"][brain], template.t1_reference[brain])[0, 1]
    entry = json.loads(dataset.read_text())["test"][0]
    subject_t1w = np.asarray(_load(dataset, entry, "image").dataobj)
    mask = np.asarray(_load(dataset, entry, "mask").dataobj) > 0
    r_subject = np.corrcoef(subject_t1w[mask], template.t1_reference[mask])[0, 1]
    print(f"\nT1w vs template T1 inside the brain: r = {r_mean:.3f} (template physics), {r_subject:.3f} (test subject)")
    assert r_mean > 0.9
    assert r_subject > 0.7  # lower by design: deformed, lesioned, misregistered, biased and noisy


# contrast, tissues in decreasing mean intensity
ORDER_CASES = [
    ["t1w", ("wm", "gm", "csf")],
    ["t2w", ("csf", "gm", "wm")],
    ["pdw", ("gm", "wm")],
    ["flair", ("gm", "wm", "csf")],
]


@parameterized.expand(ORDER_CASES)
def test_tissue_contrast(contrast, order):
    image, pure = _mean_subject()[contrast], _pure_tissue()
    means = [image[pure[t]].mean() for t in order]
    assert all(a > b for a, b in zip(means, means[1:])), dict(zip(order, means))


def test_flair_suppresses_csf(mean_subject):
    pure = _pure_tissue()
    flair, t2w = mean_subject["flair"], mean_subject["t2w"]
    assert flair[pure["csf"]].mean() < 0.5 * flair[pure["wm"]].mean()  # nulled, unlike in T2w
    assert t2w[pure["csf"]].mean() > 2.0 * t2w[pure["wm"]].mean()


def test_t1w_and_t2w_inversely_related(dataset):
    entry = json.loads(dataset.read_text())["training"][0]
    t1w, t2w = (np.asarray(_load(dataset, entry, k).dataobj) for k in ("image", "label"))
    mask = np.asarray(_load(dataset, entry, "mask").dataobj) > 0
    assert np.corrcoef(t1w[mask], t2w[mask])[0, 1] < -0.3


def test_lesions_appear():
    template = load_template(COARSE)
    settings = replace(MEAN_SUBJECT, max_lesions=DEFAULT_SETTINGS.max_lesions)
    plain = simulate_subject(template, (0, 0, 0), "t1w", "flair", MEAN_SUBJECT).target
    for k in range(8):  # the first seeds with a lesion
        subject = simulate_subject(template, (0, 0, k), "t1w", "flair", settings)
        assert 0 <= subject.num_lesions <= DEFAULT_SETTINGS.max_lesions
        if subject.num_lesions:
            break
    assert subject.num_lesions > 0
    assert subject.target.max() > 1.5 * plain.max()  # oedema and necrosis are bright in FLAIR
    # the saved lesion mask lies where the FLAIR is brighter than the lesion-free subject, inside the brain
    lesion = subject.lesion > 0
    assert subject.lesion.dtype == np.uint8 and lesion.any()
    assert (lesion & (subject.mask == 0)).sum() <= 0.05 * lesion.sum()
    assert subject.target[lesion].mean() > 1.3 * plain[lesion].mean()
    assert not simulate_subject(template, (0, 0, 0), "t1w", "flair", MEAN_SUBJECT).lesion.any()  # no lesions, no mask


# ---------------------------------------------------------------------------------------------------------
# the task needs spatial context
# ---------------------------------------------------------------------------------------------------------


def test_oracle_metric_on_a_pointwise_task(template, mean_subject):
    """The metric itself: a target that is a function of the source is mapped almost perfectly."""
    source = mean_subject["t1w"]
    mask = template.t1_reference > 0.2
    assert pointwise_mapping_psnr(source, np.sqrt(source), mask) > 40.0


def test_pointwise_remap_is_the_per_bin_mean():
    """A hand-made pair: a known monotone mapping is recovered to the bin width, and with noise on the target each
    bin maps to the mean of its target voxels (fitted only where ``fit`` says)."""
    bins = 8
    source = np.repeat((np.arange(bins) + 0.5) / bins * 2.0 - 1.0, 4)  # 4 voxels at each bin centre
    target = source**3  # monotone
    np.testing.assert_allclose(pointwise_remap(source, target, bins=bins), target)
    noise = np.tile([-0.3, 0.1, 0.2, 0.0], bins)  # mean 0 per bin
    np.testing.assert_allclose(pointwise_remap(source, target + noise, bins=bins), target, atol=1e-12)
    fit = np.tile([1, 1, 0, 0], bins)  # only the first two voxels of each bin: their mean, -0.1 off
    np.testing.assert_allclose(pointwise_remap(source, target + noise, fit, bins=bins), target - 0.1, atol=1e-12)
    # any source value of a bin maps to that bin's value; out-of-range values to the end bins
    probe = pointwise_remap(
        np.array([-1.5, -0.99, 0.01, 0.99, 1.0, 1.5, *source]),
        np.array([0.0] * 6 + list(target)),
        fit=np.array([0] * 6 + [1] * len(source)),
        bins=bins,
    )
    np.testing.assert_allclose(probe[:6], target[[0, 0, 16, 31, 31, 31]])


def test_pointwise_mapping_stays_short_of_perfect(dataset):
    entry = json.loads(dataset.read_text())["test"][0]
    source, target, mask = (np.asarray(_load(dataset, entry, k).dataobj) for k in ("image", "label", "mask"))
    psnr = pointwise_mapping_psnr(source, target, mask)
    print(f"\nbest pointwise T1w -> T2w mapping fitted on the test subject: PSNR {psnr:.2f} dB inside the brain")
    assert ORACLE_RANGE_DB[0] < psnr < ORACLE_RANGE_DB[1]


def test_robust_normalise_range():
    image = np.arange(1000, dtype=np.float32)
    assert robust_normalise(image).min() == -1.0 and robust_normalise(image).max() == 1.0
    unclipped = robust_normalise(image, clip=False)
    np.testing.assert_allclose(unclipped[[0, -1]], (-1.0101, 1.0101), atol=1e-4)  # 0.5/99.5 % -> -1/+1


# ---------------------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------------------


def test_seed_reproducible_and_independent_of_split_sizes(tmp_path):
    kwargs = {"spacing": COARSE, "num_validation": 1}
    first = generate_demo_dataset(tmp_path / "a", num_training=1, num_test=1, **kwargs)
    again = generate_demo_dataset(tmp_path / "b", num_training=2, num_test=2, **kwargs)
    other = generate_demo_dataset(tmp_path / "c", num_training=1, num_test=1, seed=1, **kwargs)
    lists = [json.loads(p.read_text()) for p in (first, again, other)]
    for split in ("training", "validation", "test"):
        for key in ("image", "label", "mask", "lesion"):
            a, b, c = (np.asarray(_load(p, lst[split][0], key).dataobj) for p, lst in zip((first, again, other), lists))
            np.testing.assert_array_equal(a, b)  # bit for bit
            if key in ("image", "label"):
                assert not np.array_equal(a, c)
    second = np.asarray(_load(again, lists[1]["training"][1], "image").dataobj)
    assert not np.array_equal(second, np.asarray(_load(first, lists[0]["training"][0], "image").dataobj))


def test_contrast_independent_of_its_partner():
    """A contrast's image does not depend on which contrast it is paired with (same role)."""
    template = load_template(COARSE)
    a = simulate_subject(template, (3, 0, 0), "t1w", "t2w")
    b = simulate_subject(template, (3, 0, 0), "t1w", "flair")
    np.testing.assert_array_equal(a.source, b.source)
    np.testing.assert_array_equal(a.mask, b.mask)


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------


def test_datalist_structure(dataset, template):
    root = dataset.parent
    content = json.loads(dataset.read_text())
    assert set(content) == {"training", "validation", "test"}
    for split, entries in content.items():
        assert len(entries) == 1
        for entry in entries:
            assert set(entry) == {"image", "label", "mask", "lesion"}
            assert entry["image"].endswith("t1w.nii.gz") and entry["label"].endswith("t2w.nii.gz")
            images = {}
            for key, path in entry.items():
                assert not os.path.isabs(path) and (root / path).is_file()
                images[key] = nib.load(root / path)
                np.testing.assert_allclose(images[key].affine, template.affine, atol=1e-5)
                assert nib.aff2axcodes(images[key].affine) == ("R", "A", "S")
                assert images[key].shape == template.shape
            assert images["image"].get_data_dtype() == np.float32 and images["label"].get_data_dtype() == np.float32
            mask = np.asarray(images["mask"].dataobj)
            assert set(np.unique(mask)) == {0, 1} and 0.1 < mask.mean() < 0.3
            assert images["lesion"].get_data_dtype() == np.uint8
    record = json.loads((root / demo.RECORD_NAME).read_text())
    assert (record["source"], record["target"], record["seed"], record["spacing_mm"]) == ("t1w", "t2w", 0, SPACING)
    assert (record["num_training"], record["num_validation"], record["num_test"]) == (1, 1, 1)
    assert "ICBM152 2009a" in record["template"] and "Simulated" in record["description"]
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no staging folder left behind


def test_cli_prints_datalist(tmp_path, capsys):
    out = tmp_path / "cli"
    command = ["--output_dir", str(out), "--source", "flair", "--target", "t1w", "--spacing", str(COARSE)]
    fire.Fire(demo.main, command=command + ["--num_training", "1", "--num_validation", "1", "--num_test", "1"])
    assert str(out / "datalist.json") in capsys.readouterr().out
    entry = json.loads((out / "datalist.json").read_text())["training"][0]
    assert entry["image"].endswith("flair.nii.gz") and entry["label"].endswith("t1w.nii.gz")


def test_cli_bad_argument_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit, match=r"ValueError: source='t3w' is not a known contrast"):
        fire.Fire(demo.main, command=["--output_dir", str(out), "--source", "t3w"])
    assert not out.exists()


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / "empty").mkdir()
    datalist = generate_demo_dataset(tmp_path / "empty", num_training=1, num_validation=1, num_test=1, spacing=COARSE)
    assert datalist.is_file()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return simulate_subject(*args, **kwargs)

    monkeypatch.setattr(demo, "simulate_subject", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_dataset(tmp_path / "data", num_training=2, num_validation=1, num_test=1, spacing=COARSE)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# bad input: one clear error, nothing written
# ---------------------------------------------------------------------------------------------------------

BAD_CASES = [
    ["unknown_source", {"source": "t3w"}, "source='t3w'"],
    ["unknown_target", {"target": "dwi"}, "target='dwi'"],
    ["same_contrast", {"source": "t2w", "target": "t2w"}, "must be different"],
    ["no_training", {"num_training": 0}, "num_training=0"],
    ["negative_validation", {"num_validation": -1}, "num_validation=-1"],
    ["fractional_test", {"num_test": 1.5}, "num_test=1.5"],
    ["zero_spacing", {"spacing": 0}, "spacing=0"],
    ["negative_spacing", {"spacing": -2.0}, "spacing=-2.0"],
    ["negative_seed", {"seed": -1}, "seed=-1"],
]


@parameterized.expand(BAD_CASES)
def test_bad_argument(_, kwargs, message):
    with tempfile.TemporaryDirectory() as parent:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
            generate_demo_dataset(Path(parent) / "data", **kwargs)
        assert os.listdir(parent) == []


@parameterized.expand([["non_empty_folder"], ["file"]])
def test_existing_output(kind):
    with tempfile.TemporaryDirectory() as parent:
        target = Path(parent) / "data"
        if kind == "file":
            target.write_text("keep")
        else:
            target.mkdir()
            (target / "keep.txt").write_text("keep")
        before = sorted(str(p) for p in Path(parent).rglob("*"))
        with pytest.raises(FileExistsError, match="output_dir="):
            generate_demo_dataset(target)
        assert sorted(str(p) for p in Path(parent).rglob("*")) == before
