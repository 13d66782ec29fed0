from __future__ import annotations

import json

import pytest

from custom.data.datalist import DatasetError, find_images, load_datalist, prepare_dataset


@pytest.fixture
def dataset(tmp_path):
    for name in ("a_t1.nii.gz", "a_t2.nii.gz", "b_t1.nii.gz", "b_t2.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    datalist = {
        "training": [{"image": "a_t1.nii.gz", "label": "a_t2.nii.gz"}],
        "test": [{"image": "b_t1.nii.gz", "label": "b_t2.nii.gz"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    return tmp_path


def test_load_datalist_makes_paths_absolute(dataset):
    items = load_datalist(dataset / "datalist.json", "training")
    assert items == [{"image": str(dataset / "a_t1.nii.gz"), "label": str(dataset / "a_t2.nii.gz")}]


@pytest.mark.parametrize(
    "content, key, message",
    [
        ("{not json", "training", "is not valid JSON"),
        ('{"training": []}', "training", "must be a non-empty list"),
        ('{"training": [{"image": "a_t1.nii.gz"}]}', "training", r"training\[0\] lacks the key\(s\) \['label'\]"),
        ('{"training": [{"image": "a_t1.nii.gz", "label": "gone.nii.gz"}]}', "training", "gone.nii.gz' does not exist"),
        ('{"training": [1]}', "training", "must be an object"),
        ('{"training": [{"image": "a_t1.nii.gz", "label": "a_t2.nii.gz"}]}', "validation", "has no list 'validation'"),
    ],
)
def test_load_datalist_errors_name_file_and_problem(dataset, content, key, message):
    bad = dataset / "bad.json"
    bad.write_text(content)
    with pytest.raises(DatasetError, match=message) as err:
        load_datalist(bad, key)
    assert str(bad) in str(err.value)


def test_missing_datalist_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_datalist(tmp_path / "nope.json")


def test_prepare_dataset_never_creates_a_user_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset_dir='.*missing' does not exist"):
        prepare_dataset(tmp_path / "missing", demo_dataset_dir=tmp_path / "demo")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "demo").exists()


def test_prepare_dataset_needs_a_datalist(tmp_path):
    with pytest.raises(DatasetError, match="has no datalist 'datalist.json'"):
        prepare_dataset(tmp_path, demo_dataset_dir=tmp_path / "demo")


def test_prepare_dataset_rejects_unknown_demo_contrast(tmp_path):
    demo = tmp_path / "demo"
    with pytest.raises(DatasetError, match="source_contrast='t3w'"):
        prepare_dataset(demo, demo_dataset_dir=demo, source_contrast="t3w")
    assert not demo.exists()


def test_prepare_dataset_returns_existing_datalist(dataset):
    assert prepare_dataset(dataset, demo_dataset_dir=dataset / "demo") == str(dataset / "datalist.json")


def test_find_images_prefers_datalist_then_globs(dataset, tmp_path_factory):
    assert find_images(dataset) == [{"image": str(dataset / "b_t1.nii.gz")}]
    folder = tmp_path_factory.mktemp("plain")
    (folder / "sub").mkdir()
    for name in ("sub/x.nii.gz", "y.nrrd", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert [item["image"] for item in find_images(folder)] == [str(folder / "sub/x.nii.gz"), str(folder / "y.nrrd")]
    with pytest.raises(DatasetError, match="holds no image files"):
        find_images(tmp_path_factory.mktemp("empty"))
