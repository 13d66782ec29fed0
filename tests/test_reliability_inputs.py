"""Every bad input stops the bundle with a message that names the file (or config id) and the problem, writes no
output and overwrites nothing of the user's; outputs are written atomically and never replaced by accident.

Most cases run the bundle configs in-process (``ConfigWorkflow``, the object ``python -m monai.bundle run`` builds),
which keeps the suite fast; the command line itself is exercised by the one-line-error and pickle-payload tests.
DICOM inputs (corrupt, truncated, inconsistent series) are covered by ``tests/test_dicom_batch.py`` and
``tests/test_dicom_reader.py``.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor

from custom.data import DatasetError
from custom.engines import SynthesisError
from custom.utils import CheckpointError, bundle_error
from custom.transforms import (
    ImageCheckError,
    ImageReadError,
    OutputExistsError,
    OutputWriteError,
    SafeLoadImage,
    SafeLoadImaged,
    SafeSaveImage,
)
from custom.transforms.io import PARTIAL_MARKER, count_written, loader_of, use_loader

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
TINY = {"network_def#preset": "T", "num_inference_steps": 1, "slice_batch_size": 64}
SHIPPED = REPO / "bundle" / "models" / "model.pt"  # the trained weights, for claims about what the model outputs
INFERENCE = json.loads((CONFIGS / "inference.json").read_text())
SHIPPED_SETTINGS = {
    "network_def#preset": INFERENCE["network_def"]["preset"],
    "num_inference_steps": INFERENCE["num_inference_steps"],
}


def volume(shape=(10, 12, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, shape).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Weights of the tiny preset with the inference config's network arguments (untrained is enough here)."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(network_def("T").state_dict(), path)
    return path


def network_def(preset: str) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["network_def#preset"] = preset
    return parser.get_parsed_content("network_def")


@pytest.fixture(autouse=True)
def keep_excepthook(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # insurance: in-process runs leave the hook alone


@pytest.fixture()
def output(tmp_path) -> Path:
    """An output folder that already holds a user's file, which must survive every failure untouched."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.nii.gz").write_bytes(b"user data")
    return folder


def assert_nothing_written(folder: Path, report: bool = False) -> None:
    """Only the user's file is there (and, after a run that reached its inputs, the run's ``report.json``)."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == (["keep.nii.gz", "report.json"] if report else ["keep.nii.gz"]), files
    assert (folder / "keep.nii.gz").read_bytes() == b"user data"


def workflow(dataset: Path, output: Path, config: str = "inference.json", **overrides) -> ConfigWorkflow:
    """A bundle config in-process, initialised, with ``overrides`` of its ids."""
    flow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        dataset_dir=str(dataset),
        output_dir=str(output),
        **overrides,
    )
    flow.initialize()
    return flow


def infer(dataset: Path, output: Path, checkpoint: Path, **overrides) -> None:
    workflow(dataset, output, ckpt_path=str(checkpoint), **{**TINY, **overrides}).run()


def failure(call, *args, **kwargs) -> BaseException:
    """Run ``call`` expecting it to fail; return our error from the chain MONAI wrapped it in."""
    with pytest.raises(Exception) as info:
        call(*args, **kwargs)
    found = bundle_error(info.value)
    assert found is not None, f"no error of ours in the chain: {info.value!r}"
    return found


# ----------------------------------------------------------------------------------------------- inference inputs


def bad_nifti(kind: str, folder: Path) -> Path:
    path = folder / "scan.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "not an image":
        path.write_text("this is a text file, not a NIfTI image")
    elif kind == "truncated":
        write_nifti(path, volume())
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "4-D":
        write_nifti(path, np.stack([volume(), volume(seed=1)], -1))
    elif kind == "2-D":
        write_nifti(path, volume()[:, :, 0])
    elif kind == "constant":
        write_nifti(path, np.full((10, 12, 8), 7.0, np.float32))
    elif kind in ("NaN", "inf"):
        data = volume()
        data[3, 4, 5] = np.nan if kind == "NaN" else np.inf
        write_nifti(path, data)
    return path


BAD_IMAGES = [
    ("not an image", ImageReadError, "cannot be read as an image"),
    ("truncated", ImageReadError, "truncated or corrupt"),
    ("4-D", ImageCheckError, "has 2 channels; 1 expected"),
    ("2-D", ImageCheckError, "a 2-D image, but 3-D"),
    ("constant", ImageCheckError, "is constant"),
    ("NaN", ImageCheckError, "1 NaN or infinite voxels"),
    ("inf", ImageCheckError, "1 NaN or infinite voxels"),
]


@pytest.mark.parametrize("kind, error, message", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_is_named_and_nothing_written(tmp_path, output, checkpoint, kind, error, message):
    """A bad image fails its own report row, named with the reason; the run ends with a summary error."""
    path = bad_nifti(kind, tmp_path / "data")
    found = failure(infer, tmp_path / "data", output, checkpoint)
    assert isinstance(found, SynthesisError) and "1 failed" in str(found), str(found)
    (row,) = json.loads((output / "report.json").read_text())["images"]
    assert row["status"] == "failed" and row["input"] == str(path), row
    assert (
        row["reason"].startswith(f"{error.__name__}: ") and str(path) in row["reason"] and message in row["reason"]
    ), row
    assert_nothing_written(output, report=True)


def test_missing_input_file_is_named(tmp_path, output, checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    (data / "datalist.json").write_text(json.dumps({"test": [{"image": "absent.nii.gz"}]}))
    found = failure(infer, data, output, checkpoint)
    assert (
        isinstance(found, DatasetError) and str(data / "absent.nii.gz") in str(found) and "does not exist" in str(found)
    )
    found = failure(infer, tmp_path / "nowhere", output, checkpoint)
    assert "dataset_dir=" in str(found) and "does not exist" in str(found)
    assert_nothing_written(output)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"training": []}', "has no list 'test'"),
        ('{"test": [{"img": "a"}]}', "lacks the key(s) ['image']"),
    ],
)
def test_bad_datalist_is_named(tmp_path, output, checkpoint, content, message):
    data = tmp_path / "data"
    data.mkdir()
    (data / "datalist.json").write_text(content)
    found = failure(infer, data, output, checkpoint)
    assert isinstance(found, DatasetError) and str(data / "datalist.json") in str(found) and message in str(found)
    assert_nothing_written(output)


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "incompatible"])
def test_bad_inference_checkpoint_is_named(tmp_path, output, checkpoint, damage):
    write_nifti(tmp_path / "data" / "scan.nii.gz", volume())
    ckpt = tmp_path / "model.pt"
    if damage == "garbage":
        ckpt.write_bytes(b"\x00garbage" * 64)
    elif damage == "truncated":
        ckpt.write_bytes(checkpoint.read_bytes()[:5000])
    elif damage == "incompatible":  # weights of another preset
        torch.save(network_def("S").state_dict(), ckpt)
    found = failure(infer, tmp_path / "data", output, ckpt)
    assert isinstance(found, CheckpointError) and f"checkpoint '{ckpt}'" in str(found)
    expected = {"missing": "does not exist", "incompatible": "is incompatible"}.get(damage, "is corrupt")
    assert expected in str(found), str(found)
    assert_nothing_written(output)


# -------------------------------------------------------------------------------------------------- training pairs


def train_dataset(dataset: Path, output: Path) -> None:
    flow = workflow(dataset, output, "train.json", **{"network_def#preset": "T"})
    flow.parser.get_parsed_content("train#dataset")  # CacheDataset: loads and checks every pair


@pytest.mark.parametrize(
    "label_shape, label_affine, message",
    [
        ((10, 12, 9), AFFINE, "differ in shape: (10, 12, 8) vs (10, 12, 9)"),
        ((10, 12, 8), np.diag([4.0, 4.0, 5.0, 1.0]), "affines differ"),
    ],
    ids=["shape", "affine"],
)
def test_mismatched_pair_is_named(tmp_path, output, label_shape, label_affine, message):
    data = tmp_path / "data"
    image = write_nifti(data / "s0" / "t1w.nii.gz", volume())
    label = write_nifti(data / "s0" / "t2w.nii.gz", volume(label_shape, seed=2), label_affine)
    (data / "datalist.json").write_text(json.dumps({"training": [{"image": str(image), "label": str(label)}]}))
    found = failure(train_dataset, data, output)
    assert isinstance(found, ImageCheckError)
    assert str(image) in str(found) and str(label) in str(found) and message in str(found), str(found)
    assert_nothing_written(output)


def test_training_datalist_missing_label_is_named(tmp_path, output):
    data = tmp_path / "data"
    image = write_nifti(data / "s0" / "t1w.nii.gz", volume())
    (data / "datalist.json").write_text(json.dumps({"training": [{"image": str(image)}]}))
    found = failure(train_dataset, data, output)
    assert isinstance(found, DatasetError) and "training[0] lacks the key(s) ['label']" in str(found)
    assert_nothing_written(output)


# ------------------------------------------------------------------------------------------------ safe outputs


@pytest.fixture(scope="module")
def one_scan(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scan")
    write_nifti(folder / "scan.nii.gz", volume())
    return folder


def test_inference_writes_once_and_refuses_to_overwrite(one_scan, output, checkpoint):
    """The shipped weights write a finite synthesis on the input's grid, that is not the source; once only."""
    infer(one_scan, output, SHIPPED, **SHIPPED_SETTINGS)
    written = output / "scan_synth.nii.gz"
    image = nib.load(str(written))
    synthesis, source = image.get_fdata(), nib.load(str(one_scan / "scan.nii.gz")).get_fdata()
    assert image.shape == (10, 12, 8) and np.allclose(image.affine, AFFINE) and np.isfinite(synthesis).all()
    assert 0.0 <= synthesis.min() and synthesis.max() <= 1000.0 and synthesis.std() > 1.0, (
        synthesis.min(),
        synthesis.max(),
    )
    assert abs(np.corrcoef(synthesis.ravel(), source.ravel())[0, 1]) < 0.99  # a synthesis, not a copy of the source
    first, inode = written.read_bytes(), written.stat().st_ino
    infer(one_scan, output, checkpoint)  # skipped, before any synthesis, and reported so
    (row,) = json.loads((output / "report.json").read_text())["images"]
    assert row["status"] == "skipped" and "overwrite" in row["reason"] and row["output"] == str(written), row
    assert written.read_bytes() == first and written.stat().st_ino == inode
    infer(one_scan, output, checkpoint, overwrite=True)  # explicitly allowed: replaced (a new file renamed in)
    assert written.stat().st_ino != inode and nib.load(str(written)).shape == (10, 12, 8)
    assert not [p for p in output.iterdir() if PARTIAL_MARKER in p.name]


def test_unwritable_output_folder_is_named(one_scan, tmp_path, checkpoint):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the output folder would be")
    found = failure(infer, one_scan, blocker / "out", checkpoint)
    assert (
        isinstance(found, OutputWriteError)
        and str(blocker) in str(found)
        and "cannot create the output folder" in str(found)
    )
    assert blocker.read_text() == "a file where the output folder would be"


def test_full_disk_leaves_no_partial_output(one_scan, output, checkpoint, monkeypatch):
    """A write that fails half-way (ENOSPC after some bytes) names the path and reason and leaves nothing."""

    def failing_save(img, filename, *args, **kwargs):
        with open(filename, "wb") as stream:
            stream.write(b"\x1f\x8b half of a gzip stream")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))

    monkeypatch.setattr(nib, "save", failing_save)
    found = failure(infer, one_scan, output, checkpoint)
    assert isinstance(found, SynthesisError)
    (row,) = json.loads((output / "report.json").read_text())["images"]
    assert row["reason"].startswith("OutputWriteError: ") and str(output / "scan_synth.nii.gz") in row["reason"]
    assert "No space left on device" in row["reason"], row
    assert_nothing_written(output, report=True)


def test_safe_saver_unit(tmp_path, monkeypatch):
    """Array saver: atomic write, refusal to overwrite, unwritable folder (``os.access``: tests may run as root)."""
    image = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4), meta={"filename_or_obj": "/data/scan.nii.gz"})
    saver = SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False, print_log=False)
    saver(image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_synth.nii.gz"]
    assert image.meta["saved_to"] == str(tmp_path / "scan_synth.nii.gz")
    with pytest.raises(OutputExistsError, match="scan_synth.nii.gz' exists already"):
        saver(image)
    SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False, overwrite=True)(image)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(OutputWriteError, match=f"output folder '{tmp_path}' is not writable"):
        SafeSaveImage(output_dir=str(tmp_path), output_postfix="other", separate_folder=False)(image)


def test_pinned_monai_internals_fail_loudly(tmp_path):
    """The two MONAI internals the savers and loaders rely on (no public API; monai 1.6.1) still work as used:
    ``LoadImaged`` calls the loader ``use_loader`` gives it, ``SaveImage``'s count names unnamed images 0, 1, ...;
    and a MONAI without them stops with a message that names what changed."""
    loader = SafeLoadImaged("image")
    assert isinstance(loader_of(loader), SafeLoadImage)  # what the DICOM batch registers its reader with
    with pytest.raises(ImageReadError, match="does not exist"):
        loader({"image": str(tmp_path / "absent.nii.gz")})
    saver = SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False)
    for _ in range(2):
        saver(MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4)))
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == ["0_synth.nii.gz", "1_synth.nii.gz"]
    with pytest.raises(RuntimeError, match="no longer counts written images in '_data_index'"):
        count_written(object.__new__(SafeSaveImage))
    with pytest.raises(RuntimeError, match="LoadImaged no longer keeps its LoadImage in '_loader'"):
        use_loader(object.__new__(SafeLoadImaged), SafeLoadImage())


# ------------------------------------------------------------------------------------------- the command line


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_error_is_one_clear_last_line(tmp_path, output, checkpoint):
    """Through ``python -m monai.bundle run``: exit status 1 and the last line is our error, not MONAI's wrapper."""
    path = bad_nifti("NaN", tmp_path / "data")
    result = cli(
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--dataset_dir",
        str(tmp_path / "data"),
        "--output_dir",
        str(output),
        "--ckpt_path",
        str(checkpoint),
        "--network_def#preset",
        "T",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("SynthesisError: NIfTI synthesis: 1 images, 0 written, 0 skipped, 1 failed (first: "), last
    assert f"ImageCheckError: '{path}' has 1 NaN or infinite voxels." in last, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:]
    assert_nothing_written(output, report=True)


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: code that must never run when weights are loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_in_model_pt_is_refused(tmp_path, one_scan, output, checkpoint):
    """A models/model.pt carrying a pickled payload is refused through the inference command; the payload never
    runs (weights_only=True) and the message names the file."""
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    (bundle / "configs").symlink_to(CONFIGS)
    marker = tmp_path / "PAYLOAD_RAN"
    state = torch.load(checkpoint, weights_only=True)
    state["denoiser.mask_token"] = Payload(str(marker))
    torch.save(state, bundle / "models" / "model.pt")
    result = cli(
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(one_scan),
        "--output_dir",
        str(output),
        "--network_def#preset",
        "T",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"CheckpointError: checkpoint '{bundle / 'models' / 'model.pt'}' was refused"), last
    assert not marker.exists()
    assert_nothing_written(output)
