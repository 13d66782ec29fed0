"""MaskDiT-style token dropping for PHMDiff (arXiv 2507.16579; MaskDiT, Zheng et al., arXiv 2306.09305).

A random (1 − r) of the tokens of each sample is kept and the encoder runs on those only; the decoder sees the full
sequence again, with a learned mask token at the dropped positions.
"""

from __future__ import annotations

import torch

__all__ = ["num_kept_tokens", "random_masking", "restore_tokens"]


def num_kept_tokens(num_tokens: int, mask_ratio: float) -> int:
    """Number of tokens kept at mask ratio r: ``round((1 - r) * num_tokens)``, at least 1."""
    return max(1, int(round((1.0 - mask_ratio) * num_tokens)))


def random_masking(x: torch.Tensor, num_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Keep a uniformly random subset of ``num_keep`` tokens per sample (MAE / MaskDiT shuffling).

    Args:
        x: tokens (B, N, D).
        num_keep: tokens to keep per sample.

    Returns:
        ``(x_kept, keep_mask, ids_restore)``: kept tokens (B, K, D) in shuffled order, a float mask (B, N) that is 1
        at kept tokens, and the permutation (B, N) that :func:`restore_tokens` uses to put tokens back.

    Example::

        >>> x_kept, keep, ids_restore = random_masking(torch.rand(2, 10, 8), 5)
        >>> x_kept.shape, keep.sum(1)
        (torch.Size([2, 5, 8]), tensor([5., 5.]))
    """
    b, n, d = x.shape[0], x.shape[1], x.shape[2]
    noise = torch.rand(b, n, device=x.device)  # (B, N)
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, N)
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N)
    ids_keep = ids_shuffle[:, :num_keep]  # (B, K)
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(b, num_keep, d))  # (B, K, D)
    keep_mask = torch.zeros(b, n, device=x.device, dtype=x.dtype)
    keep_mask.scatter_(1, ids_keep, 1.0)  # (B, N)
    return x_kept, keep_mask, ids_restore


def restore_tokens(x_kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """
    Undo :func:`random_masking`: put the kept tokens back at their positions and ``mask_token`` everywhere else.

    Args:
        x_kept: kept tokens (B, K, D) as returned by :func:`random_masking`.
        ids_restore: the permutation (B, N) returned by :func:`random_masking`.
        mask_token: learned token (1, 1, D).

    Returns:
        full sequence (B, N, D).
    """
    b, k, d = x_kept.shape[0], x_kept.shape[1], x_kept.shape[2]
    n = ids_restore.shape[1]
    fill = mask_token.to(x_kept.dtype).expand(b, n - k, d)  # (B, N - K, D)
    x = torch.cat([x_kept, fill], dim=1)  # (B, N, D) in shuffled order
    return torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(b, n, d))  # (B, N, D)
