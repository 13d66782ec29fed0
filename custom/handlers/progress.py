"""A progress bar for Ignite engines that the bundle's handler lists can attach."""

from __future__ import annotations

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """Attach Ignite's tqdm :class:`ProgressBar`, showing the engine output ``output_key`` (e.g. the loss).

    Args:
        output_key: key of ``engine.state.output`` shown beside the bar, or None for the bar alone.
        persist: keep each epoch's finished bar on screen.
        desc: text in front of the bar.
    """

    def __init__(self, output_key: str | None = "loss", persist: bool = True, desc: str = "") -> None:
        self.output_key = output_key
        self.bar = ProgressBar(persist=persist, desc=desc)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self._shown if self.output_key else None)

    def _shown(self, output: dict) -> dict[str, float]:
        return {self.output_key: float(output[self.output_key].detach())}
