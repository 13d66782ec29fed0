from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

import struct
import zlib

import numpy as np

from custom.handlers import (
    AtomicCheckpointSaver,
    EngineCheckpointSaver,
    ExponentialMovingAverageHandler,
    synthesis_grid,
)
from custom.handlers.checkpoint import _monai_saver_checkpoints
from custom.handlers.tensorboard import png_bytes
from custom.networks import ExponentialMovingAverage, ema_avg_fn


def test_ema_follows_the_warmup_formula():
    update = ema_avg_fn(decay=0.9, warmup=10.0)
    averaged, current = torch.tensor(1.0), torch.tensor(0.0)
    assert float(update(averaged, current, torch.tensor(0))) == pytest.approx(0.1)  # d = 1/10
    assert float(update(averaged, current, torch.tensor(1000))) == pytest.approx(0.9)  # capped at decay
    with pytest.raises(ValueError, match="decay=1.0"):
        ema_avg_fn(1.0)


def test_ema_handler_averages_after_each_iteration():
    network = torch.nn.Linear(2, 1, bias=False)
    ema = ExponentialMovingAverage(network, decay=0.5)
    engine = Engine(lambda e, b: network.weight.data.add_(1.0))
    ExponentialMovingAverageHandler(ema, network).attach(engine)
    start = network.weight.detach().clone()
    engine.run([0, 1, 2], max_epochs=1)
    assert torch.allclose(network.weight, start + 3)
    # first update copies (+1); then d = min(0.5, 2/11) and min(0.5, 3/12)
    expected = start + 1
    expected = expected * (2 / 11) + (start + 2) * (9 / 11)
    expected = expected * (3 / 12) + (start + 3) * (9 / 12)
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    # training changes the network only: after the averaging, the network still takes a gradient step (the handler
    # neither froze nor replaced its parameters) and the EMA, a copy of its own, stays as it was
    averaged = ema.module.weight.detach().clone()
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    network(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert torch.allclose(network.weight, start + 2)  # d(sum(w·1))/dw = 1: one step of -1
    assert torch.equal(ema.module.weight, averaged) and ema.module.weight.grad is None


def test_monai_saver_private_checkpoints_are_still_there(tmp_path):
    """The atomic savers replace the save handlers of MONAI's ``CheckpointSaver``, which keeps its Ignite
    ``Checkpoint`` objects in private attributes: a MONAI that renames them must fail here, by name."""
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"net": torch.nn.Linear(1, 1)},
        save_final=True,
        save_key_metric=True,
        key_metric_filename="model.pt",
        save_interval=1,
    )
    final, key_metric, interval = _monai_saver_checkpoints(saver)
    assert (final.save_handler.filename, key_metric.save_handler.filename, interval.save_handler.filename) == (
        None,
        "model.pt",
        None,
    )
    assert all(type(c.save_handler).__name__ == "_AtomicDiskSaver" for c in (final, key_metric, interval))
    assert _monai_saver_checkpoints(CheckpointSaver(str(tmp_path), {"net": torch.nn.Linear(1, 1)})) == (None,) * 3

    class RenamedInMonai:  # what a MONAI without `_interval_checkpoint` would look like
        _final_checkpoint = _key_metric_checkpoint = None

    with pytest.raises(AttributeError, match=r"CheckpointSaver\._interval_checkpoint .* updated for this MONAI"):
        _monai_saver_checkpoints(RenamedInMonai())


def test_resumed_saver_counts_earlier_checkpoints_in_n_saved(tmp_path):
    """A resumed run takes the interval checkpoints on disk up to the resumed epoch as its own (through Ignite's
    public ``Checkpoint.state_dict``/``load_state_dict``), so ``n_saved`` removes them as it would its own."""
    for epoch in (1, 2, 5):  # epoch 5: a later run's, beyond the resumed epoch, not adopted
        torch.save({}, tmp_path / f"latest_checkpoint_epoch={epoch}.pt")
    saver = EngineCheckpointSaver(
        str(tmp_path), {"net": torch.nn.Linear(1, 1)}, file_prefix="latest", save_interval=1, n_saved=2
    )
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    engine.load_state_dict({"epoch": 2, "max_epochs": 3, "epoch_length": 1})
    adopted = []
    engine.add_event_handler(Events.STARTED, lambda e: adopted.extend(saver.interval_checkpoint.state_dict()["_saved"]))
    engine.run([0])
    assert adopted == [(1, "latest_checkpoint_epoch=1.pt"), (2, "latest_checkpoint_epoch=2.pt")]
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["latest_checkpoint_epoch=2.pt", "latest_checkpoint_epoch=3.pt", "latest_checkpoint_epoch=5.pt"]
    assert "trainer" in torch.load(tmp_path / "latest_checkpoint_epoch=3.pt", weights_only=True)


def test_synthesis_grid_layout_and_range():
    source, pred, target = (torch.full((3, 1, 5, 6), v) for v in (-1.0, 0.0, 1.0))
    grid = synthesis_grid(source, pred, target, max_rows=2)
    assert grid.shape == (1, 12, 20)  # panels transposed: 6 rows x 5 columns each
    assert float(grid[0, 0, 0]) == 0.0 and float(grid[0, 0, 5]) == 0.5 and float(grid[0, 0, 10]) == 1.0
    assert float(grid[0, 0, 15]) == 0.5  # |0 - 1| = 1 drawn at the middle of the error scale


def test_synthesis_grid_shows_anterior_up():
    source = torch.zeros(1, 1, 5, 6)
    source[0, 0, 0, 5] = 1.0  # voxel at x = 0 (left in RAS), y = 5 (most anterior)
    grid = synthesis_grid(source, source, source, max_rows=1)
    assert float(grid[0, 0, 0]) == 1.0  # top-left of the first panel
    assert float(grid[0, :, :5].sum()) == 1.0 + 0.5 * (6 * 5 - 1)  # nowhere else in that panel (0 shows as 0.5)


def test_png_bytes_round_trip():
    image = torch.linspace(0, 1, 12).reshape(1, 3, 4)
    data = png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (4, 3)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(3, 5)
    assert (rows[:, 0] == 0).all() and rows[2, 4] == 255 and rows[0, 0 + 1] == 0
