from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

import struct
import zlib

import numpy as np

from custom.handlers import ExponentialMovingAverage, ExponentialMovingAverageHandler, ema_avg_fn, synthesis_grid
from custom.handlers.tensorboard import png_bytes


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
    assert not any(p.requires_grad is False for p in network.parameters())


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
