"""Picture of a validation batch for TensorBoard and a PNG file: source | synthesis | target | error, one row per
slice, each slice shown anterior up (axial RAS slices transposed and flipped)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils import optional_import

from ..transforms.io import write_file_atomic

SummaryWriter, _ = optional_import("torch.utils.tensorboard", name="SummaryWriter")

__all__ = ["synthesis_grid", "png_bytes", "SynthesisGridHandler"]


def synthesis_grid(source: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, max_rows: int = 4) -> torch.Tensor:
    """A (1, W·rows, H·4) image in [0, 1] from channel-first 2-D (H, W) batches in [-1, 1], each panel transposed and
    flipped so that an axial RAS slice shows anterior up; the error is |pred - target|. Of 3-D (H, W, D) volumes the
    middle axial slice is shown."""
    rows = []
    for s, p, t in list(zip(source, pred, target))[:max_rows]:
        s, p, t = (x[0].detach().float().cpu() for x in (s, p, t))
        if s.ndim == 3:
            s, p, t = (x[..., x.shape[-1] // 2] for x in (s, p, t))
        error = (p - t).abs() - 1.0  # |error| in [0, 2] shown on the same [-1, 1] scale
        rows.append(torch.cat([x.T.flip(0) for x in (s, p, t, error)], dim=1))
    return ((torch.cat(rows, dim=0).clamp(-1, 1) + 1) / 2)[None]


def png_bytes(image: torch.Tensor) -> bytes:
    """An 8-bit grey PNG of a (1, H, W) or (H, W) image in [0, 1] (zlib only: no imaging library needed)."""
    pixels = (image.reshape(image.shape[-2:]).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    height, width = pixels.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), pixels], axis=1).tobytes()  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _stacked(items: list[dict] | dict, key: str) -> torch.Tensor:
    """A batch tensor from an engine's batch or output, decollated (a list of dicts) or not."""
    return torch.stack([item[key] for item in items]) if isinstance(items, list) else items[key]


class SynthesisGridHandler:
    """Write :func:`synthesis_grid` of the first batch to TensorBoard after every evaluation run and, with
    ``png_path``, to that PNG file (replaced atomically, so a viewer never reads half a file).

    Args:
        log_dir: TensorBoard folder.
        tag: TensorBoard image tag.
        max_rows: slices shown.
        png_path: PNG file of the latest evaluation's picture; None for TensorBoard only.
    """

    def __init__(
        self, log_dir: str, tag: str = "source|synthesis|target|error", max_rows: int = 4, png_path: str | None = None
    ) -> None:
        self.log_dir = log_dir
        self.png_path = png_path
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
        if self.png_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.png_path)), exist_ok=True)
            write_file_atomic(self.png_path, png_bytes(self._grid))
