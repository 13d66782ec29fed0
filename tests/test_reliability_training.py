"""Reliability of training through the bundle command: resume after SIGKILL, atomic checkpoints, determinism,
clear checkpoint errors and a non-finite loss that stops training with the files named.

Every run uses the tiny preset, 1 inference step and a tiny demo dataset (2 training volumes at 4 mm, 1 volume per
batch: 2 iterations an epoch), so one bundle run takes about 15 s of one CPU core.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from custom.utils import CheckpointError, latest_checkpoint, load_checkpoint
from custom.handlers.checkpoint import TEMP_PREFIX

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "bundle" / "configs" / "train.json")
EPOCHS = 3
EPOCH_LOSS = re.compile(r"Epoch\[(\d+)\] Metrics -- .*?train_loss: ([-\d.naife]+)")
KILL_AT_ITERATION = 3  # epoch 2, first of its 2 iterations: after the epoch-1 checkpoint, mid-epoch


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from custom.data import generate_demo_dataset

    folder = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(folder, num_training=2, num_validation=1, num_test=1, spacing=4.0)
    return folder


def command(demo: Path, output: Path, config: str = TRAIN, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        "--dataset_dir",
        str(demo),
        "--output_dir",
        str(output),
        "--network_def#preset",
        "T",
        "--network_def#num_inference_steps",
        "1",
        "--slices_per_volume",
        "2",
        "--val_slices_per_volume",
        "1",
        "--volumes_per_batch",
        "1",
        "--train#trainer#max_epochs",
        str(EPOCHS),
        *extra,
    ]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(cmd: list[str], log: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    with open(log, "a") as out:
        return subprocess.run(cmd, cwd=REPO, env=environment(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout)


def epoch_losses(log: Path) -> dict[int, str]:
    """Per-epoch mean training loss from the StatsHandler lines (4 decimals, as logged)."""
    return {int(e): v for e, v in EPOCH_LOSS.findall(log.read_text())}


def weights(output: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the latest training checkpoint (network, EMA, optimizer, scheduler, RNG states)."""
    ckpt = load_checkpoint(latest_checkpoint(output / "checkpoints"))
    flat = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            flat[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)

    walk("", ckpt)
    return flat


def weights_hash(output: Path, key: str = "/network/") -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(weights(output).items()):
        if name.startswith(key):
            digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_files(output: Path) -> list[str]:
    return sorted(p.name for p in (output / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def uninterrupted(demo, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted")
    result = run(command(demo, output), output / "log.txt")
    assert result.returncode == 0, (output / "log.txt").read_text()[-3000:]
    return output


def assert_same_training(resumed: Path, reference: Path) -> None:
    """Killed and resumed training ends bit-identical to the uninterrupted run: weights, EMA, optimizer moments,
    scheduler and RNG states, and the same per-epoch losses."""
    got, want = weights(resumed), weights(reference)
    assert sorted(got) == sorted(want)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"
    assert epoch_losses(resumed / "log.txt") == epoch_losses(reference / "log.txt")


def test_resume_after_sigkill_mid_epoch(demo, uninterrupted, tmp_path):
    """SIGKILL in the middle of epoch 2; the same command resumes at epoch 2 from the epoch-1 checkpoint, and the
    result equals the uninterrupted run exactly."""
    overlay = tmp_path / "kill.json"  # the first run only: a SIGKILL to itself right after iteration 3
    overlay.write_text(
        json.dumps(
            {
                "initialize": [
                    {"_target_": "custom.utils.report_errors_briefly"},
                    "$monai.utils.set_determinism(seed=@seed)",
                    f"$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once={KILL_AT_ITERATION}),"
                    " lambda engine: os.kill(os.getpid(), 9))",
                ]
            }
        )
    )
    first = run(command(demo, tmp_path, f"['{TRAIN}', '{overlay}']"), tmp_path / "log.txt")
    assert first.returncode == -signal.SIGKILL
    assert checkpoint_files(tmp_path) == ["latest_checkpoint_epoch=1.pt", "model.pt"]  # nothing partial
    assert list(epoch_losses(tmp_path / "log.txt")) == [1]

    second = run(command(demo, tmp_path), tmp_path / "log.txt")
    log = (tmp_path / "log.txt").read_text()
    assert second.returncode == 0, log[-3000:]
    assert "Restored all variables from" in log and "latest_checkpoint_epoch=1.pt" in log
    assert list(epoch_losses(tmp_path / "log.txt")) == [1, 2, 3]  # numbering continues; epoch 1 is not redone
    assert checkpoint_files(tmp_path) == [f"latest_checkpoint_epoch={EPOCHS}.pt", "model.pt"]  # n_saved=1 kept
    assert_same_training(tmp_path, uninterrupted)


def test_resume_after_sigkill_at_a_random_moment(demo, uninterrupted, tmp_path):
    """An external SIGKILL at a random moment after the first checkpoint appeared (during training, validation or
    a checkpoint write): every checkpoint file left loads, and the same command finishes equal to the
    uninterrupted run."""
    ckpt_dir = tmp_path / "checkpoints"
    with open(tmp_path / "log.txt", "w") as out:
        process = subprocess.Popen(command(demo, tmp_path), cwd=REPO, env=environment(), stdout=out, stderr=out)
        deadline = time.monotonic() + 180
        while not latest_checkpoint(ckpt_dir) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random().uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    for name in checkpoint_files(tmp_path):  # a kill during a write leaves its temporary file: nothing can remove it
        if not name.startswith(TEMP_PREFIX):
            assert name.endswith(".pt"), f"an unexpected file was left: {name}"
            load_checkpoint(ckpt_dir / name)  # complete files only (atomic saver)
    result = run(command(demo, tmp_path), tmp_path / "log.txt")
    assert result.returncode == 0, (tmp_path / "log.txt").read_text()[-3000:]
    assert not [n for n in checkpoint_files(tmp_path) if n.startswith(TEMP_PREFIX)]  # the next run removed it
    assert_same_training(tmp_path, uninterrupted)


def test_same_seed_same_weights(demo, uninterrupted, tmp_path):
    """Two CPU runs with the same seed and config give the same network weights (hash of the tensors)."""
    result = run(command(demo, tmp_path), tmp_path / "log.txt")
    assert result.returncode == 0
    assert weights_hash(tmp_path) == weights_hash(uninterrupted)
    assert weights_hash(tmp_path, "/ema/") == weights_hash(uninterrupted, "/ema/")


def test_other_seed_other_weights(demo, uninterrupted, tmp_path):
    """The hash is sensitive: another seed gives other weights (so the determinism test is not vacuous)."""
    result = run(command(demo, tmp_path, TRAIN, "--seed", "1", "--train#trainer#max_epochs", "1"), tmp_path / "log.txt")
    assert result.returncode == 0
    assert weights_hash(tmp_path) != weights_hash(uninterrupted)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "incompatible"])
def test_bad_resume_checkpoint_is_named(demo, uninterrupted, tmp_path, damage):
    """A corrupt or incompatible latest checkpoint stops the resumed run with one line naming the path and reason."""
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    source = Path(latest_checkpoint(uninterrupted / "checkpoints"))
    target = ckpt_dir / source.name
    if damage == "truncated":
        target.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif damage == "garbage":
        target.write_bytes(b"not a checkpoint" * 100)
    else:  # a checkpoint of the "S" preset resumed with the "T" preset
        torch.save({"network": {"denoiser.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, target)
    before = target.read_bytes()
    result = subprocess.run(
        command(demo, tmp_path, TRAIN, "--train#trainer#max_epochs", str(EPOCHS + 1)),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("CheckpointError: checkpoint ") and str(target) in last, last
    assert ("incompatible" if damage == "incompatible" else "corrupt") in last
    assert target.read_bytes() == before  # the user's file is untouched
    assert checkpoint_files(tmp_path) == [target.name]


def test_non_finite_loss_stops_with_files_named(demo, uninterrupted, tmp_path):
    """A loss that turns NaN at iteration 3 stops training with the epoch, iteration and the batch's files; the
    epoch-1 checkpoint stays the last (good) one and is not replaced."""
    loss = {"_target_": "custom.losses.PHMDiffLoss"}
    calls = "n.__setitem__(0, n[0] + 1)"  # the loss runs once per training iteration
    factor = f"(float('nan') if n[0] >= {KILL_AT_ITERATION} else 1.0)"
    nan_loss = f"$lambda out, target, n=[0]: ({calls}, @loss_base(out, target) * {factor})[1]"
    overlay = tmp_path / "nan.json"
    overlay.write_text(json.dumps({"loss_base": loss, "loss": nan_loss}))
    result = subprocess.run(
        command(demo, tmp_path, f"['{TRAIN}', '{overlay}']"),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("NonFiniteLossError: training loss is nan at epoch 2, iteration 3"), last
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:]  # the engine logs one line too
    assert "t1w.nii.gz" in last and str(demo) in last
    assert checkpoint_files(tmp_path) == ["latest_checkpoint_epoch=1.pt", "model.pt"]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "latest_checkpoint_epoch=1.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["network"].values())


def test_checkpoint_load_refuses_pickled_code(tmp_path):
    """``load_checkpoint`` (used by the bundle's loaders) refuses a pickle with a payload and names the file."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"network": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*refused"):
        load_checkpoint(path)
    assert not marker.exists()


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the payload a weights_only load must never execute."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
