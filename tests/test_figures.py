"""The docs' figure commands (benchmarks/figures.py) on a tiny hand-made dataset."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from benchmarks.figures import _lesion_centre, save_orthogonal_planes, save_synthesis_grid


@pytest.fixture
def dataset(tmp_path):
    data, synth = tmp_path / "data", tmp_path / "out"
    (data / "s0").mkdir(parents=True)
    (synth / "s0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    lesion = np.zeros((12, 10, 8), np.uint8)
    lesion[7:9, 2:4, 5] = 1
    for path, array in (
        ("data/s0/t1w.nii.gz", rng.random((12, 10, 8))),
        ("data/s0/t2w.nii.gz", rng.random((12, 10, 8))),
        ("data/s0/lesion.nii.gz", lesion),
        ("out/s0/t1w_synth.nii.gz", rng.random((12, 10, 8))),
    ):
        nib.save(nib.Nifti1Image(array, affine), str(tmp_path / path))
    entry = {"image": "s0/t1w.nii.gz", "label": "s0/t2w.nii.gz", "lesion": "s0/lesion.nii.gz"}
    (data / "datalist.json").write_text(json.dumps({"test": [entry]}))
    return data, synth, entry


def test_planes_and_grid_cross_the_lesion(dataset, tmp_path):
    data, synth, entry = dataset
    assert _lesion_centre(str(data), entry, (12, 10, 8)) == (7, 2, 5)  # first of the equal maxima per axis
    assert _lesion_centre(str(data), {k: v for k, v in entry.items() if k != "lesion"}, (12, 10, 8)) == (6, 5, 4)
    for make, name in ((save_orthogonal_planes, "planes.png"), (save_synthesis_grid, "grid.png")):
        out = make(str(data), str(synth), str(tmp_path / name))
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out == str(tmp_path / name)


def test_missing_synthesis_is_named(dataset, tmp_path):
    data, synth, _ = dataset
    (synth / "s0" / "t1w_synth.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t1w_synth.nii.gz.*run inference first"):
        save_orthogonal_planes(str(data), str(synth), str(tmp_path / "planes.png"))
