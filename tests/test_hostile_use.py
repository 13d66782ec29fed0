"""Careless and hostile use of the NIfTI inference path, the config flags and the command line (issue 16): flags
given as text, outputs that would land outside OUT, headers that claim huge volumes, killed and interrupted runs,
a batch that meets existing outputs and bad images, mistyped and wrong overrides, a checkpoint carrying
``os.system``. Each test names the item it covers.

Most cases run the inference config in-process (``ConfigWorkflow``, as ``tests/test_reliability_inputs.py``
does); the command line itself is run for the one-line errors and the exit status.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import monai
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from monai.inferers import SimpleInferer
from monai.transforms import Compose, LoadImaged

from custom.bundle import ConfigError, as_flag, check_overrides
from custom.data import DatasetError
from custom.engines import SynthesisError
from custom.utils import CheckpointError, load_checkpoint, report_errors_briefly
from custom.io import DicomBatchSynthesis
from custom.transforms import (
    ImageCheckError,
    ImageReadError,
    ModalityNormalize,
    OutputExistsError,
    SafeLoadImage,
    SafeSaveImage,
)
from custom.transforms.io import MAX_VOXELS, PARTIAL_MARKER
from tests.test_reliability_inputs import CONFIGS, cli, failure, network_def, volume, write_nifti
from tests.test_reliability_inputs import workflow as inference_workflow

INFERENCE, TRAIN = str(CONFIGS / "inference.json"), str(CONFIGS / "train.json")
DICOM = f"['{INFERENCE}', '{CONFIGS / 'inference_dicom.json'}']"
TINY = {"network_def#preset": "T", "num_inference_steps": 1, "slice_batch_size": 64}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(network_def("T").state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def keep_excepthook(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # insurance: in-process runs leave the hook alone


def workflow(dataset: Path, output: Path, checkpoint: Path, **overrides) -> ConfigWorkflow:
    return inference_workflow(dataset, output, ckpt_path=str(checkpoint), **{**TINY, **overrides})


def infer(dataset: Path, output: Path, checkpoint: Path, **overrides) -> None:
    workflow(dataset, output, checkpoint, **overrides).run()


def report(output: Path) -> dict:
    return json.loads((output / "report.json").read_text())


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- 1: flags parsed strictly

FLAGS = [
    (True, True),
    (False, False),
    ("true", True),
    ("FALSE", False),
    (" False ", False),
    ("1", True),
    ("0", False),
    (1, True),
    (0, False),
]
NOT_FLAGS = ["maybe", "yes", "", "2", 2, None, 0.0]


@pytest.mark.parametrize("value, expected", FLAGS)
def test_flag_text_is_parsed(value, expected):
    assert as_flag(value, "overwrite") is expected


@pytest.mark.parametrize("value", NOT_FLAGS)
def test_anything_else_is_not_a_flag(value):
    with pytest.raises(ConfigError, match=rf"^overwrite={value!r} is not a flag"):
        as_flag(value, "overwrite")


@pytest.mark.parametrize("text", ["false", "FALSE", "0"])
def test_overwrite_false_as_text_keeps_the_output(tmp_path, checkpoint, text):
    """``--overwrite false`` arrives as the text 'false', which Python takes as true: it replaced the output."""
    write_nifti(tmp_path / "data" / "scan.nii.gz", volume())
    output = tmp_path / "out"
    infer(tmp_path / "data", output, checkpoint)
    written = output / "scan_synth.nii.gz"
    inode = written.stat().st_ino
    infer(tmp_path / "data", output, checkpoint, overwrite=text)
    assert written.stat().st_ino == inode
    assert [r["status"] for r in report(output)["images"]] == ["skipped"]


def test_saver_flag_text(tmp_path):
    image = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4), meta={"filename_or_obj": "/data/scan.nii.gz"})
    SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False, overwrite="true")(image)
    saver = SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False, overwrite="false")
    assert saver.overwrite is False
    with pytest.raises(ConfigError, match="overwrite='maybe' is not a flag"):
        SafeSaveImage(output_dir=str(tmp_path), overwrite="maybe")


def test_overwrite_false_holds_when_another_run_writes_meanwhile(tmp_path, monkeypatch):
    """The existence check and the rename were two steps: an output another run wrote in between was replaced."""
    image = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4), meta={"filename_or_obj": "/data/scan.nii.gz"})
    target, write = tmp_path / "scan_synth.nii.gz", SafeSaveImage._write

    def write_then_other_run_publishes(self, *args):
        write(self, *args)
        target.write_bytes(b"the other run's output")

    monkeypatch.setattr(SafeSaveImage, "_write", write_then_other_run_publishes)
    saver = SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False)
    with pytest.raises(OutputExistsError, match="scan_synth.nii.gz' exists already; it was left untouched"):
        saver(image)
    assert target.read_bytes() == b"the other run's output"
    assert files(tmp_path) == ["scan_synth.nii.gz"]  # no temporary file left
    SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False, overwrite=True)(image)
    assert target.read_bytes() != b"the other run's output" and files(tmp_path) == ["scan_synth.nii.gz"]


def test_overwrite_false_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    """FAT and some SMB shares refuse hard links: the output is still written, and an existing one still kept."""
    import errno

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    image = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4), meta={"filename_or_obj": "/data/scan.nii.gz"})
    SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False)(image)
    assert files(tmp_path) == ["scan_synth.nii.gz"]
    first = (tmp_path / "scan_synth.nii.gz").read_bytes()
    target, write = tmp_path / "other_synth.nii.gz", SafeSaveImage._write

    def write_then_other_run_publishes(self, *args):
        write(self, *args)
        target.write_bytes(b"the other run's output")

    monkeypatch.setattr(SafeSaveImage, "_write", write_then_other_run_publishes)
    other = MetaTensor(torch.rand(1, 4, 5, 6), affine=torch.eye(4), meta={"filename_or_obj": "/data/other.nii.gz"})
    with pytest.raises(OutputExistsError, match="other_synth.nii.gz' exists already"):
        SafeSaveImage(output_dir=str(tmp_path), output_postfix="synth", separate_folder=False)(other)
    assert target.read_bytes() == b"the other run's output" and (tmp_path / "scan_synth.nii.gz").read_bytes() == first
    assert files(tmp_path) == ["other_synth.nii.gz", "scan_synth.nii.gz"]


def test_dicom_batch_flags_parsed_strictly(tmp_path):
    def batch(**flags):
        return DicomBatchSynthesis(
            tmp_path,
            tmp_path / "out",
            Compose([LoadImaged("image")]),
            SimpleInferer(),
            torch.nn.Identity(),
            Compose([]),
            **flags,
        )

    runner = batch(overwrite="false", save_nifti="False")
    assert runner.overwrite is False and runner.save_nifti is False
    assert batch(overwrite="1", save_nifti="TRUE").save_nifti is True
    with pytest.raises(ConfigError, match="save_nifti='maybe' is not a flag"):
        batch(save_nifti="maybe")


# ------------------------------------------------------------------------------------ 2: nothing outside OUT


def test_single_file_as_dataset_dir_writes_into_output_dir(tmp_path, checkpoint):
    """It used to land in the parent of OUT while the console said OUT."""
    scan = write_nifti(tmp_path / "data" / "scan.nii.gz", volume())
    output = tmp_path / "nest" / "out"
    infer(scan, output, checkpoint)
    assert files(output) == ["report.json", "scan_synth.nii.gz"]
    assert files(tmp_path / "nest") == ["out/report.json", "out/scan_synth.nii.gz"]


def test_datalist_entries_outside_dataset_dir_write_into_output_dir(tmp_path, checkpoint):
    """``../`` and absolute entries used to be written next to the input; now flat into OUT, folders kept inside."""
    inside = write_nifti(tmp_path / "data" / "sub" / "inside.nii.gz", volume())
    up = write_nifti(tmp_path / "elsewhere" / "up.nii.gz", volume(seed=1))
    absolute = write_nifti(tmp_path / "far" / "away" / "absolute.nii.gz", volume(seed=2))
    entries = ["sub/inside.nii.gz", "../elsewhere/up.nii.gz", str(absolute)]
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"test": [{"image": e} for e in entries]}))
    output = tmp_path / "out"
    infer(tmp_path / "data", output, checkpoint)
    assert files(output) == ["absolute_synth.nii.gz", "report.json", "sub/inside_synth.nii.gz", "up_synth.nii.gz"]
    for source in (inside, up, absolute):
        assert files(source.parent) == [source.name]


def test_output_path_through_a_link_out_of_output_dir_is_flattened(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "outside")
    saver = SafeSaveImage(
        output_dir=str(tmp_path / "out"),
        output_postfix="synth",
        separate_folder=False,
        data_root_dir=str(tmp_path / "data"),
    )
    meta = {"filename_or_obj": str(tmp_path / "data" / "sub" / "scan.nii.gz")}
    assert saver.output_path(meta) == tmp_path / "out" / "scan_synth.nii.gz"
    assert not (tmp_path / "data").exists()  # naming creates no folder


def test_output_dir_inside_a_scanned_dataset_dir_is_not_taken_as_input(tmp_path, checkpoint):
    """A second run found the first run's outputs in OUT below IN and synthesised them again (``*_synth_synth``)."""
    data = tmp_path / "data"
    write_nifti(data / "scan.nii.gz", volume())
    output = data / "out"
    infer(data, output, checkpoint)
    infer(data, output, checkpoint)
    assert files(data) == ["out/report.json", "out/scan_synth.nii.gz", "scan.nii.gz"]
    assert [(Path(r["input"]).name, r["status"]) for r in report(output)["images"]] == [("scan.nii.gz", "skipped")]


def test_output_dir_same_as_a_scanned_dataset_dir_is_refused(tmp_path, checkpoint):
    data = tmp_path / "data"
    write_nifti(data / "scan.nii.gz", volume())
    found = failure(infer, data, data, checkpoint)
    assert isinstance(found, DatasetError)
    assert str(found).startswith(f"output_dir='{data}' is dataset_dir: the outputs would be found as inputs")
    assert files(data) == ["scan.nii.gz"]


def test_two_inputs_with_one_output_name_do_not_replace_each_other(tmp_path, checkpoint):
    first = write_nifti(tmp_path / "a" / "scan.nii.gz", volume())
    second = write_nifti(tmp_path / "b" / "scan.nii.gz", volume(seed=1))
    (tmp_path / "a" / "datalist.json").write_text(json.dumps({"test": [{"image": str(first)}, {"image": str(second)}]}))
    found = failure(infer, tmp_path / "a", tmp_path / "out", checkpoint, overwrite=True)
    assert isinstance(found, SynthesisError) and "2 images, 1 written, 0 skipped, 1 failed" in str(found)
    rows = report(tmp_path / "out")["images"]
    assert rows[1]["status"] == "failed" and f"is that of {first} in this run" in rows[1]["reason"]


# ------------------------------------------------------------------------------------------ 7: resource bombs


def forged_nifti(path: Path, shape: tuple[int, ...], payload: int = 33_000) -> Path:
    """A NIfTI header declaring ``shape`` float32, followed by ``payload`` random bytes (gzip when ``.gz``)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    content = header.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


@pytest.mark.parametrize(
    "name, shape, message",
    [
        ("claims.nii.gz", (500, 500, 500), "more than the"),  # 500 MB of data in 33 KB of gzip
        ("claims.nii", (500, 500, 500), "more than the"),
        ("claims.nii.gz", (1200, 1200, 1200), f"more than max_voxels={MAX_VOXELS:,}"),  # the case
        ("claims.nii", (20000, 20000, 20000), f"more than max_voxels={MAX_VOXELS:,}"),  # was "(MemoryError: )"
    ],
)
def test_header_claiming_a_huge_volume_is_refused_before_allocating(tmp_path, name, shape, message):
    path = forged_nifti(tmp_path / name, shape)
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError) as info:
            SafeLoadImage(image_only=True)(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"input '{path}' declares {' x '.join(map(str, shape))}" in str(info.value) and message in str(info.value)
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated"


def test_max_voxels_is_a_setting(tmp_path):
    path = write_nifti(tmp_path / "scan.nii.gz", volume((20, 20, 20)))
    assert SafeLoadImage(image_only=True)(str(path)).shape == (20, 20, 20)
    with pytest.raises(ImageReadError, match="declares 20 x 20 x 20 = 8,000 voxels \\(more than max_voxels=1,000\\)"):
        SafeLoadImage(image_only=True, max_voxels=1000)(str(path))


def test_degenerate_normalisation_is_an_error_naming_the_file():
    """A volume almost all zero: both percentiles 0; MONAI only warned and the image went in unscaled."""
    data = torch.zeros(1, 20, 20, 20)
    data[0, :2, :2, :2] = 100.0  # 0.1 % of the voxels
    image = MetaTensor(data, meta={"filename_or_obj": "/data/empty.nii.gz"})
    with pytest.raises(
        ImageCheckError, match="'/data/empty.nii.gz': its 0.5 and 99.5 intensity percentiles are both 0 "
    ):
        ModalityNormalize("MR")(image)
    assert float(ModalityNormalize("CT")(image).min()) == pytest.approx(-1 / 3)  # a fixed window: nothing degenerate


# ------------------------------------------------------------------------------- 8: killed and interrupted runs


def test_stale_partials_of_killed_runs_are_swept_at_start(tmp_path, checkpoint):
    write_nifti(tmp_path / "data" / "scan.nii.gz", volume())
    output = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [
        output / f".old_synth{PARTIAL_MARKER}{dead_pid}.nii.gz",
        output / "sub" / f".x_synth{PARTIAL_MARKER}{dead_pid}.nii.gz",
        output / f".report.json{PARTIAL_MARKER}{dead_pid}",
    ]
    live = output / f".other_synth{PARTIAL_MARKER}{os.getpid()}.nii.gz"  # a run still writing
    users = [  # names no writer of this project creates, or behind a link: never the sweep's
        output / "sub" / f".notes{PARTIAL_MARKER}{dead_pid}-draft.txt",
        output / f".notes{PARTIAL_MARKER}{dead_pid}.txt",
        output / f"notes{PARTIAL_MARKER}{dead_pid}",
        tmp_path / "elsewhere" / f".y_synth{PARTIAL_MARKER}{dead_pid}.nii.gz",
    ]
    for path in [*stale, live, *users]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an image")
    (output / "linked").symlink_to(tmp_path / "elsewhere")
    infer(tmp_path / "data", output, checkpoint)
    assert not any(p.exists() for p in stale)
    assert live.exists()
    assert [p for p in users if not p.exists()] == []


def test_sigterm_during_a_write_stops_like_ctrl_c(tmp_path, checkpoint, monkeypatch):
    """SIGTERM used to kill the run outright; now, as Ctrl-C: the half-written file is removed and the report
    lists the images done and the ones not reached."""
    for name in ("a", "b", "c"):
        write_nifti(tmp_path / "data" / f"{name}.nii.gz", volume(seed=ord(name)))
    output = tmp_path / "out"
    save, calls, handler = nib.save, [], signal.getsignal(signal.SIGTERM)

    def save_then_sigterm(img, filename, *args, **kwargs):
        calls.append(filename)
        save(img, filename, *args, **kwargs)
        if len(calls) == 2:  # the second image, half-way: its temporary file is on disk
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(nib, "save", save_then_sigterm)
    flow = workflow(tmp_path / "data", output, checkpoint)
    with pytest.raises(KeyboardInterrupt):
        flow.run()
    assert files(output) == ["a_synth.nii.gz", "report.json"]
    content = report(output)
    assert content["complete"] is False
    assert [(r["status"], Path(r["input"]).name) for r in content["images"]] == [
        ("written", "a.nii.gz"),
        ("skipped", "b.nii.gz"),
        ("skipped", "c.nii.gz"),
    ]
    assert content["images"][1]["reason"] == "not processed: the run stopped"
    assert signal.getsignal(signal.SIGTERM) == handler  # restored after the run


@pytest.fixture
def command_line(monkeypatch):
    """Make ``sys.argv`` that of ``python -m monai.bundle run``; ``sys.excepthook`` is restored afterwards."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "argv", [str(Path(monai.__file__).parent / "bundle" / "__main__.py"), "run"])


def test_in_process_run_keeps_the_callers_excepthook(monkeypatch):
    """A bundle run in-process (MONAI Label, a notebook, a test) keeps its caller's ``sys.excepthook``; only
    ``python -m monai.bundle`` gets the one-line hook (next test)."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(sys, "argv", ["monailabel_train.py"])
    callers_hook = sys.excepthook
    report_errors_briefly()
    assert sys.excepthook is callers_hook


def test_interrupt_ends_with_one_line(capsys, command_line):
    report_errors_briefly()
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as interrupt:
        sys.excepthook(KeyboardInterrupt, interrupt, interrupt.__traceback__)
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "KeyboardInterrupt" and "Traceback" not in err


# ----------------------------------------------------------------------------- 9: per-image report, skip, go on


def test_batch_skips_existing_reports_bad_and_goes_on(tmp_path, checkpoint):
    """It used to stop at the first bad image, or at the first existing output after synthesising it."""
    data, output = tmp_path / "data", tmp_path / "out"
    write_nifti(data / "a.nii.gz", volume())
    bad = write_nifti(data / "b.nii.gz", np.full((10, 12, 8), np.nan, np.float32))
    write_nifti(data / "c.nii.gz", volume(seed=3))
    output.mkdir()
    (output / "c_synth.nii.gz").write_bytes(b"an earlier result")
    flow = workflow(data, output, checkpoint)
    calls = []
    flow.parser.get_parsed_content("network").register_forward_pre_hook(lambda *_: calls.append(1))
    found = failure(flow.run)
    assert isinstance(found, SynthesisError)
    assert str(found).startswith("NIfTI synthesis: 3 images, 1 written, 1 skipped, 1 failed (first: ImageCheckError")
    assert len(calls) == 1  # only a.nii.gz was synthesised; the existing output was skipped before synthesis
    assert (output / "c_synth.nii.gz").read_bytes() == b"an earlier result"
    content = report(output)
    assert content["complete"] is True and content["counts"] == {"written": 1, "skipped": 1, "failed": 1}
    rows = {Path(r["input"]).name: r for r in content["images"]}
    assert rows["a.nii.gz"]["status"] == "written" and rows["a.nii.gz"]["output"] == str(output / "a_synth.nii.gz")
    assert rows["b.nii.gz"]["status"] == "failed"
    assert f"ImageCheckError: '{bad}' has 960 NaN or infinite voxels" in rows["b.nii.gz"]["reason"]
    assert rows["c.nii.gz"] | {"seconds": 0} == {
        "input": str(data / "c.nii.gz"),
        "status": "skipped",
        "reason": "the output exists (overwrite=False)",
        "output": str(output / "c_synth.nii.gz"),
        "seconds": 0,
    }
    assert files(output) == ["a_synth.nii.gz", "c_synth.nii.gz", "report.json"]  # no temporary report left


@pytest.mark.slow
def test_batch_exit_status_and_last_line(tmp_path, checkpoint):
    data, output = tmp_path / "data", tmp_path / "out"
    write_nifti(data / "a.nii.gz", volume())
    (data / "b.nii.gz").write_text("not an image")
    result = cli(
        "--config_file",
        INFERENCE,
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(output),
        "--ckpt_path",
        str(checkpoint),
        "--network_def#preset",
        "T",
        "--num_inference_steps",
        "1",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("SynthesisError: NIfTI synthesis: 2 images, 1 written, 0 skipped, 1 failed"), last
    assert "Traceback" not in result.stdout + result.stderr
    assert report(output)["counts"] == {"written": 1, "skipped": 0, "failed": 1}


# ------------------------------------------------------------------------------------ 11: overrides checked

WRONG_OVERRIDES = [
    (
        INFERENCE,
        ["--outptu_dir", "X"],
        "--outptu_dir: no config id 'outptu_dir' (did you mean 'output_dir'?); the ids at the top level are: ",
    ),
    (
        INFERENCE,
        ["--network_def#num_inferenc_steps", "3"],
        "(did you mean 'network_def#num_inference_steps'?); the ids in 'network_def' are: ",
    ),
    (INFERENCE, ["--num_inference_steps", "-3"], "--num_inference_steps -3: must be a whole number of at least 1."),
    (INFERENCE, ["--network_def#num_inference_steps", "abc"], "--network_def#num_inference_steps 'abc': not a number"),
    (TRAIN, ["--learning_rate", "abc"], "--learning_rate 'abc': not a number (the default is 0.001)."),
    (
        TRAIN,
        ["--train#trainer#max_epochs", "-1"],
        "--train#trainer#max_epochs -1: must be a whole number of at least 1.",
    ),
    (TRAIN, ["--train#trainer#max_epochs", "0"], "--train#trainer#max_epochs 0: must be a whole number of at least 1."),
    (
        TRAIN,
        ["--train#trainer#max_epochs", "abc"],
        "--train#trainer#max_epochs 'abc': not a number (the default is 20).",
    ),
    (TRAIN, ["--train#trainer#max_epochs=2.5"], "--train#trainer#max_epochs 2.5: not a whole number"),
    (
        DICOM,
        ["--series_description_pattern", "T1("],
        "--series_description_pattern 'T1(': not a valid regular expression",
    ),
    (INFERENCE, ["--target_modality", "XX"], "--target_modality 'XX': not a modality; choose one of MR, CT."),
    (INFERENCE, ["--overwrite", "maybe"], "--overwrite 'maybe': not a flag; use true or false (or 1 / 0)."),
    (DICOM, ["--save-nifti", "yes"], "--save_nifti 'yes': not a flag"),
    (TRAIN, ["--train#dataloader#shuffle", "false"], "a flag inside a component takes True or False"),
    (TRAIN, ["--output_dir#x", "1"], "--output_dir#x: 'output_dir' holds a value, not settings."),
    (
        DICOM,
        ["--dicom_synthesis#min_matrix", "abc"],
        "--dicom_synthesis#min_matrix 'abc': not a number (the default is 64).",
    ),
    (DICOM, ["--dicom_synthesis#min_fov_mm", "[1]"], "--dicom_synthesis#min_fov_mm [1]: not a number"),
]
RIGHT_OVERRIDES = [
    (
        INFERENCE,
        [
            "--overwrite",
            "FALSE",
            "--spacing",
            "[4.0, 4.0, 4.0]",
            "--network_def#preset",
            "T",
            "--network_def",
            "$torch.nn.Identity()",
        ],
    ),
    (
        TRAIN,
        [
            "training",
            "--train#trainer#max_epochs",
            "2",
            "--learning_rate",
            "1",
            "--validate#dataloader#pin_memory",
            "True",
        ],
    ),
    (DICOM, ["--save_nifti", "--series_description_pattern", "T1", "--target_modality", "ct", "--meta_file", "x.json"]),
    (INFERENCE, ["--network_def::preset", "T", "--dataset_dir=/data", "--", "--help"]),
    (TRAIN, ["--tracking", "mlflow", "--experiment_name", "x", "--run_name", "y"]),
    (DICOM, ["--dicom_synthesis#min_matrix", "32", "--dicom_synthesis#min_fov_mm", "80"]),
]


@pytest.mark.parametrize("config, args, message", WRONG_OVERRIDES, ids=[" ".join(c[1]) for c in WRONG_OVERRIDES])
def test_wrong_override_is_refused_naming_id_and_value(config, args, message):
    with pytest.raises(ConfigError) as info:
        check_overrides(["run", "--config_file", config, *args])
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_unknown_id_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        check_overrides(["run", "--config_file", INFERENCE, "--outptu_dir", "X"])
    assert str(info.value).endswith(", ".join(json.loads(Path(INFERENCE).read_text())) + ".")


@pytest.mark.parametrize("config, args", RIGHT_OVERRIDES, ids=[" ".join(c[1]) for c in RIGHT_OVERRIDES])
def test_right_overrides_pass(config, args):
    check_overrides(["run", "--config_file", config, *args])


def test_overrides_from_an_args_file_are_checked(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": INFERENCE, "outptu_dir": "X"}))
    with pytest.raises(ConfigError, match="no config id 'outptu_dir'"):
        check_overrides(["run", "--args_file", str(args)])


def test_checks_only_the_bundle_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "run", "--config_file", INFERENCE, "--outptu_dir", "X"])
    check_overrides()  # in-process workflows and MONAI Label pass overrides themselves


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, args, last",
    [
        (
            INFERENCE,
            ["--outptu_dir", "X"],
            "ConfigError: --outptu_dir: no config id 'outptu_dir' (did you mean 'output_dir'?)",
        ),
        (
            TRAIN,
            ["--train#trainer#max_epochs", "0"],
            "ConfigError: --train#trainer#max_epochs 0: must be a whole number",
        ),
    ],
)
def test_cli_wrong_override_is_one_line_before_anything_runs(tmp_path, config, args, last):
    result = cli("--config_file", config, "--output_dir", str(tmp_path / "out"), *args)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(last), result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_does_not_log_the_folders_given(tmp_path):
    """MONAI's input summary logged ``--input_dir``, ``--dataset_dir`` and ``--output_dir`` as given: folder names
    that can be patients'."""
    names = ("input", "dataset", "output")
    folders = [arg for name in names for arg in (f"--{name}_dir", str(tmp_path / f"Doe^Jane_{name}"))]
    result = cli("--config_file", DICOM, *folders, "--outptu_dir", "X")
    assert result.stderr.strip().splitlines()[-1].startswith("ConfigError: --outptu_dir"), result.stderr[-2000:]
    assert "Doe^Jane" not in result.stdout + result.stderr


# ---------------------------------------------------------------------------- 12: pickle payload named as unsafe


class SystemPayload:
    """Unpickling this runs ``os.system``: code that must never run when weights are loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class OpenPayload(SystemPayload):
    def __reduce__(self):
        return (io.open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload, name", [(SystemPayload, "posix.system"), (OpenPayload, "io.open")])
def test_pickle_payload_is_refused_as_unsafe_naming_the_global(tmp_path, payload, name):
    """Refused, but reported as "corrupt or not a PyTorch checkpoint" for os.system."""
    marker, path = tmp_path / "PAYLOAD_RAN", tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "extra": payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = f"checkpoint '{path}' was refused as unsafe: it holds a pickled Python object ({name})"
    assert str(info.value).startswith(message), str(info.value)
    assert not marker.exists()
