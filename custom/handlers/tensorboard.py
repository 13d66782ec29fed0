"""TensorBoard picture of a validation batch: source | synthesis | target | error, one row per slice."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.utils import optional_import

SummaryWriter, _ = optional_import("torch.utils.tensorboard", name="SummaryWriter")

__all__ = ["synthesis_grid", "SynthesisGridHandler"]


def synthesis_grid(source: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, max_rows: int = 4) -> torch.Tensor:
    """A (1, H·rows, W·4) image in [0, 1] from channel-first 2-D batches in [-1, 1]; the error is |pred - target|."""
    rows = []
    for s, p, t in list(zip(source, pred, target))[:max_rows]:
        s, p, t = (x[0].detach().float().cpu() for x in (s, p, t))
        error = (p - t).abs() - 1.0  # |error| in [0, 2] shown on the same [-1, 1] scale
        rows.append(torch.cat([s, p, t, error], dim=1))
    return ((torch.cat(rows, dim=0).clamp(-1, 1) + 1) / 2)[None]


def _stacked(items: list[dict] | dict, key: str) -> torch.Tensor:
    """A batch tensor from an engine's batch or output, decollated (a list of dicts) or not."""
    return torch.stack([item[key] for item in items]) if isinstance(items, list) else items[key]


class SynthesisGridHandler:
    """Write :func:`synthesis_grid` of the first batch to TensorBoard after every evaluation run.

    Args:
        log_dir: TensorBoard folder.
        tag: TensorBoard image tag.
        max_rows: slices shown.
    """

    def __init__(self, log_dir: str, tag: str = "source|synthesis|target|error", max_rows: int = 4) -> None:
        self.log_dir = log_dir
        self.tag = tag
        self.max_rows = max_rows
        self._writer = None
        self._grid: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep_first_batch)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._grid = None

    def _keep_first_batch(self, engine: Engine) -> None:
        if self._grid is not None:
            return
        batch, output = engine.state.batch, engine.state.output
        self._grid = synthesis_grid(
            _stacked(batch, "image"), _stacked(output, "pred"), _stacked(batch, "label"), self.max_rows
        )

    def _write(self, engine: Engine) -> None:
        if self._grid is None:
            return
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        # a MONAI evaluator run by ValidationHandler carries the trainer's epoch
        self._writer.add_image(self.tag, self._grid, engine.state.epoch)
        self._writer.flush()
