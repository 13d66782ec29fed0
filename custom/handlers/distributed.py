"""Data-parallel gradient averaging for multi-process training."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

__all__ = ["GradientAllReduceHandler"]


class GradientAllReduceHandler:
    """Average gradients over all processes after each backward pass, as DistributedDataParallel does.

    PHMDiff calls its shared denoiser once per pyramid level in every iteration. DistributedDataParallel
    expects one forward per backward and cannot wrap the synthesiser (whose ``forward`` samples) without
    renaming every checkpoint key; an all-reduce of the gradients between ``backward`` and ``optimizer.step``
    gives the same update and keeps the checkpoint format of single-process training.

    Args:
        network: the network whose gradients are averaged; its parameters are broadcast from rank 0 on attach.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("GradientAllReduceHandler needs torch.distributed to be initialised first.")
        with torch.no_grad():
            for tensor in self.network.state_dict().values():
                dist.broadcast(tensor, src=0)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        world_size = dist.get_world_size()
        grads = [p.grad for p in self.network.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
