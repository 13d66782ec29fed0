"""Batch preparation of PHMDiff for MONAI's ``SupervisedTrainer`` (arXiv 2507.16579)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

__all__ = ["PHMDiffPrepareBatch"]


class PHMDiffPrepareBatch(PrepareBatch):
    """
    Returns ``(source, target, (), {"target": target})`` from a batch dict, so ``SupervisedTrainer`` calls
    ``inferer(source, network, target=target)`` (:class:`custom.inferers.PHMDiffTrainingInferer`) and then
    ``loss_function(level_outputs, target)`` (:class:`custom.losses.PHMDiffLoss`).

    Args:
        source_key: key of the source image in the batch; default "image".
        target_key: key of the target image; default "label".

    Example::

        >>> trainer = SupervisedTrainer(..., prepare_batch=PHMDiffPrepareBatch(), inferer=PHMDiffTrainingInferer())
    """

    def __init__(self, source_key: str = CommonKeys.IMAGE, target_key: str = CommonKeys.LABEL) -> None:
        self.source_key = source_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        if not isinstance(batchdata, dict) or self.source_key not in batchdata or self.target_key not in batchdata:
            raise ValueError(f"batchdata must be a dict with keys {self.source_key!r} and {self.target_key!r}.")
        source = batchdata[self.source_key].to(device=device, non_blocking=non_blocking, **kwargs)
        target = batchdata[self.target_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return source, target, (), {"target": target}
