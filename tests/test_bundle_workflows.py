"""The bundle's commands as a user runs them: training, resumed training, evaluation, inference, two processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from custom.data import generate_demo_dataset
from custom.networks import PHMDiffSynthesizer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"
TRAIN, EVALUATE, INFERENCE, MULTI = (
    str(CONFIGS / f) for f in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json")
)
# a tiny network and little data: these tests check the wiring, not the quality
TINY = ["--network_def#preset", "T", "--network_def#num_inference_steps", "1"]
SMALL_DATA = ["--slices_per_volume", "2", "--val_slices_per_volume", "1"]

pytestmark = pytest.mark.slow


def python(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def bundle(*args: str) -> subprocess.CompletedProcess:
    return python("-m", "monai.bundle", "run", *args)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def assert_trained(state: dict, spatial_dims: int = 2) -> None:
    """``state`` is a state_dict of the tiny network whose zero-initialised (adaLN-Zero) layers have moved."""
    network = PHMDiffSynthesizer(spatial_dims=spatial_dims, preset="T")
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    network.load_state_dict(state)
    assert any(not torch.equal(initial[k], v) for k, v in network.state_dict().items())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "pairs"
    generate_demo_dataset(folder, num_training=2, num_validation=2, num_test=1, spacing=4.0)  # 2: one per rank
    return folder


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """One epoch with ``run training``, then a second with plain ``run``, which resumes from the first."""
    out = tmp_path_factory.mktemp("train")
    common = [*TINY, *SMALL_DATA, "--dataset_dir", str(dataset), "--output_dir", str(out)]
    succeeded(bundle("training", "--config_file", TRAIN, "--train#trainer#max_epochs", "1", *common))
    succeeded(bundle("--config_file", TRAIN, "--train#trainer#max_epochs", "2", *common))
    return out


def test_training_writes_checkpoints_and_tensorboard_and_resumes(trained):
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["latest_checkpoint_epoch=2.pt", "model.pt"]  # the saver keeps the latest one only
    latest = torch.load(trained / "checkpoints" / "latest_checkpoint_epoch=2.pt", weights_only=True)
    saved = {"network", "ema", "optimizer", "lr_scheduler", "random_states", "trainer", "best_model_saver"}
    assert set(latest) == saved
    ((best_score, _),) = latest["best_model_saver"]["_saved"]  # a resumed run knows the best score so far
    assert isinstance(best_score, float)
    # 2 training volumes, 2 per batch: one iteration per epoch; the resumed run went on from the first
    assert latest["trainer"]["iteration"] == 2 and latest["trainer"]["epoch_length"] == 1
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
    best = torch.load(trained / "checkpoints" / "model.pt", weights_only=True)
    PHMDiffSynthesizer(spatial_dims=2, preset="T").load_state_dict(best)  # plain state_dict


def test_evaluation_and_inference_agree(trained, dataset, tmp_path):
    ckpt = str(trained / "checkpoints" / "model.pt")
    eval_dir, infer_dir = tmp_path / "eval", tmp_path / "infer"
    succeeded(
        bundle(
            "--config_file",
            f"['{TRAIN}','{EVALUATE}']",
            *TINY,
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(eval_dir),
            "--ckpt_path",
            ckpt,
        )
    )
    with open(eval_dir / "val_psnr_raw.csv") as f:
        rows = list(csv.reader(f, delimiter="\t" if "\t" in f.readline() else ","))
    assert len(rows) == 1  # the one test subject
    evaluated_psnr = float(rows[0][1])

    succeeded(
        bundle(
            "--config_file",
            INFERENCE,
            *TINY,
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(infer_dir),
            "--ckpt_path",
            ckpt,
            "--spacing",
            "[4.0, 4.0, 4.0]",
        )
    )
    test_item = json.loads((dataset / "datalist.json").read_text())["test"][0]
    source = nib.load(dataset / test_item["image"])
    written = list(infer_dir.rglob("*_synth.nii.gz"))
    assert len(written) == 1
    synth = nib.load(written[0])
    assert synth.shape == source.shape and np.allclose(synth.affine, source.affine, atol=1e-4)

    from custom.metrics import masked_psnr
    from custom.transforms import ModalityNormalize

    target = nib.load(dataset / test_item["label"]).get_fdata()
    target = np.asarray(ModalityNormalize("MR")(torch.as_tensor(target[None], dtype=torch.float32)))[0]
    pred = synth.get_fdata() / 500.0 - 1.0  # inverse of the MR output mapping to 0..1000
    psnr = masked_psnr(pred, target)
    assert psnr == pytest.approx(evaluated_psnr, abs=0.05)


def test_two_process_gloo_training(dataset, tmp_path):
    out = tmp_path / "ddp"
    succeeded(
        python(
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            f"['{TRAIN}','{MULTI}']",
            *TINY,
            *SMALL_DATA,
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(out),
            "--train#trainer#max_epochs",
            "1",
        )
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest_checkpoint_epoch=1.pt", "model.pt"]
    assert_trained(torch.load(out / "checkpoints" / "latest_checkpoint_epoch=1.pt", weights_only=True)["network"])


@pytest.mark.parametrize(
    "override, message",
    [
        (["--source_contrast", "t3w"], "source_contrast='t3w'"),
        (["--dataset_dir", "/nonexistent/pairs"], "dataset_dir='/nonexistent/pairs' does not exist"),
    ],
)
def test_wrong_overrides_fail_at_start_naming_id_and_value(override, message, tmp_path):
    if override[0] == "--source_contrast":  # a default demo folder, so that the contrast is checked
        override = [*override, "--demo_dataset_dir", str(tmp_path / "demo")]
    result = bundle("training", "--config_file", TRAIN, *TINY, "--output_dir", str(tmp_path / "out"), *override)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "demo").exists()


def test_missing_datalist_list_names_the_file(dataset, tmp_path):
    broken = tmp_path / "pairs"
    broken.mkdir()
    content = json.loads((dataset / "datalist.json").read_text())
    del content["validation"]
    content = {k: [{key: str(dataset / v) for key, v in e.items()} for e in items] for k, items in content.items()}
    (broken / "datalist.json").write_text(json.dumps(content))
    result = bundle(
        "training", "--config_file", TRAIN, *TINY, "--dataset_dir", str(broken), "--output_dir", str(tmp_path / "out")
    )
    assert result.returncode != 0
    assert f"datalist '{broken / 'datalist.json'}' has no list 'validation'" in result.stderr
