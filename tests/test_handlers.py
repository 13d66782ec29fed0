from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from custom.handlers import ExponentialMovingAverage, ExponentialMovingAverageHandler, ema_avg_fn, synthesis_grid


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
    assert grid.shape == (1, 10, 24)
    assert float(grid[0, 0, 0]) == 0.0 and float(grid[0, 0, 6]) == 0.5 and float(grid[0, 0, 12]) == 1.0
    assert float(grid[0, 0, 18]) == 0.5  # |0 - 1| = 1 drawn at the middle of the error scale
