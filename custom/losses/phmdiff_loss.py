"""PHMDiff losses (arXiv 2507.16579): masked denoising loss, Gaussian-kernel MMD between pyramid levels, and their sum.

The combined :class:`PHMDiffLoss` consumes the per-level records (:class:`custom.networks.nets.LevelOutput`)
returned by :class:`custom.inferers.PHMDiffTrainingInferer`, so MONAI's ``SupervisedTrainer`` can call
``loss_function(level_outputs, target)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from custom.networks.nets import LevelOutput

__all__ = ["MaskedDenoisingLoss", "GaussianMMDLoss", "PHMDiffLoss"]


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == LossReduction.MEAN.value:
        return loss.mean()
    if reduction == LossReduction.SUM.value:
        return loss.sum()
    return loss


def _check_reduction(reduction: LossReduction | str) -> str:
    value = (
        LossReduction(reduction).value
        if reduction in [r.value for r in LossReduction] or isinstance(reduction, LossReduction)
        else None
    )
    if value is None:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum', got {reduction!r}.")
    return value


class MaskedDenoisingLoss(_Loss):
    """
    MaskDiT's denoising loss (Zheng et al., arXiv 2306.09305) as used by PHMDiff (arXiv 2507.16579): the mean squared
    (or absolute) error on pixels of visible (kept) tokens plus ``masked_weight`` times the same on pixels of masked
    tokens, per sample.

    Args:
        masked_weight: weight of the masked-token reconstruction term (MaskDiT: 0.1; 1 is the loss on all tokens).
        distance: "l2" (squared error, default) or "l1" (absolute error).
        reduction: "mean", "sum" or "none" over the batch ("none" gives shape (B,)).

    Example::

        >>> loss = MaskedDenoisingLoss()(pred, target, keep_mask)  # (B, C, *S), (B, C, *S), (B, 1, *S)
    """

    def __init__(
        self, masked_weight: float = 0.1, distance: str = "l2", reduction: LossReduction | str = LossReduction.MEAN
    ) -> None:
        super().__init__(reduction=_check_reduction(reduction))
        if masked_weight < 0:
            raise ValueError(f"masked_weight must be >= 0, got {masked_weight}.")
        if distance not in ("l1", "l2"):
            raise ValueError(f"distance must be 'l1' or 'l2', got {distance!r}.")
        self.masked_weight = masked_weight
        self.distance = distance

    def forward(self, input: torch.Tensor, target: torch.Tensor, keep_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: prediction (B, C, *spatial).
            target: regression target, same shape.
            keep_mask: 1 on pixels of visible tokens, 0 on masked ones, broadcastable to ``input``
                (e.g. (B, 1, *spatial)); None means all visible.
        """
        if input.shape != target.shape:
            raise ValueError(f"input and target must have the same shape, got {input.shape} and {target.shape}.")
        diff = input - target
        se = diff.abs() if self.distance == "l1" else diff**2  # (B, C, *S)
        if keep_mask is None:
            keep_mask = torch.ones_like(se)
        m = keep_mask.to(se.dtype).expand_as(se)  # (B, C, *S)
        dims = list(range(1, se.ndim))
        visible = (se * m).sum(dims) / m.sum(dims).clamp(min=1.0)  # (B,)
        masked = (se * (1 - m)).sum(dims) / (1 - m).sum(dims).clamp(min=1.0)  # (B,)
        return _reduce(visible + self.masked_weight * masked, self.reduction)


class GaussianMMDLoss(_Loss):
    """
    Squared Maximum Mean Discrepancy (Gretton et al., JMLR 2012) with a sum of Gaussian kernels of several bandwidths,
    the cross-granularity regulariser of PHMDiff (arXiv 2507.16579) between pooled encoder features of adjacent
    pyramid levels. MONAI's ``MMDMetric`` is linear-kernel only; this is the kernel version as a loss.

    k(a, b) = mean over σ of exp(−‖a − b‖² / (2σ²)) (a mean, so k(a, a) = 1 whatever the number of bandwidths);
    MMD² = mean K(x, x) + mean K(y, y) − 2 mean K(x, y) (biased V-statistic, always ≥ 0) or, with
    ``unbiased=True``, the U-statistic that leaves out the diagonals of K(x, x) and K(y, y).

    Args:
        bandwidths: the σ values. None (default) uses the median heuristic: σ² = m · median(‖a − b‖²) / 2 over all
            pairs of the pooled sample (detached) for each multiplier m in ``bandwidth_multipliers``.
        bandwidth_multipliers: multipliers of the median heuristic (used when ``bandwidths`` is None).
        unbiased: use the unbiased estimator.
        reduction: "mean", "sum" or "none" over groups, for inputs with a leading group dimension.

    Example::

        >>> mmd = GaussianMMDLoss(bandwidths=[1.0, 2.0])
        >>> mmd(torch.randn(16, 8), torch.randn(16, 8) + 1.0)  # (N, D) and (M, D) -> scalar
    """

    def __init__(
        self,
        bandwidths: Sequence[float] | None = None,
        bandwidth_multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
        unbiased: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=_check_reduction(reduction))
        if bandwidths is not None and (len(bandwidths) == 0 or any(b <= 0 for b in bandwidths)):
            raise ValueError(f"bandwidths must be a non-empty sequence of positive numbers, got {bandwidths}.")
        if len(bandwidth_multipliers) == 0 or any(m <= 0 for m in bandwidth_multipliers):
            raise ValueError(f"bandwidth_multipliers must be positive, got {bandwidth_multipliers}.")
        self.bandwidths = None if bandwidths is None else tuple(float(b) for b in bandwidths)
        self.bandwidth_multipliers = tuple(float(m) for m in bandwidth_multipliers)
        self.unbiased = unbiased

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: samples x of shape (N, D), or (G, N, D) for G independent groups.
            target: samples y of shape (M, D), or (G, M, D).
        """
        if input.ndim not in (2, 3) or input.ndim != target.ndim or input.shape[-1] != target.shape[-1]:
            raise ValueError(
                f"input and target must be (N, D) and (M, D) or batched, got {input.shape}, {target.shape}."
            )
        grouped = input.ndim == 3
        x = input if grouped else input[None]  # (G, N, D)
        y = target if grouped else target[None]  # (G, M, D)
        n, m = x.shape[1], y.shape[1]
        if self.unbiased and (n < 2 or m < 2):
            raise ValueError("the unbiased estimator needs at least 2 samples in input and target.")
        z = torch.cat([x, y], dim=1)  # (G, N + M, D)
        sq = (z * z).sum(-1)  # (G, N + M)
        d2 = (sq[:, :, None] + sq[:, None, :] - 2 * z @ z.transpose(1, 2)).clamp(min=0)  # (G, N + M, N + M)
        if self.bandwidths is not None:
            two_sigma2 = [torch.full_like(d2[:, :1, :1], 2 * b * b) for b in self.bandwidths]
        else:
            off_diag = ~torch.eye(n + m, dtype=torch.bool, device=z.device)
            median = d2.detach()[:, off_diag].median(dim=1).values.clamp(min=1e-12)[:, None, None]  # (G, 1, 1)
            two_sigma2 = [mult * median for mult in self.bandwidth_multipliers]
        k = sum(torch.exp(-d2 / s) for s in two_sigma2) / len(two_sigma2)  # (G, N + M, N + M)
        kxx, kyy, kxy = k[:, :n, :n], k[:, n:, n:], k[:, :n, n:]
        if self.unbiased:
            mmd = (kxx.sum((1, 2)) - kxx.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))
            mmd = mmd + (kyy.sum((1, 2)) - kyy.diagonal(dim1=1, dim2=2).sum(-1)) / (m * (m - 1))
        else:
            mmd = kxx.mean((1, 2)) + kyy.mean((1, 2))
        mmd = mmd - 2 * kxy.mean((1, 2))  # (G,)
        if not grouped:
            return mmd[0] if self.reduction == LossReduction.NONE.value else mmd.sum()
        return _reduce(mmd, self.reduction)


class PHMDiffLoss(_Loss):
    """
    The PHMDiff training objective (arXiv 2507.16579): the masked denoising loss summed over pyramid levels plus
    ``mmd_weight`` (λ) times the Gaussian MMD between the pooled encoder features of each pair of adjacent levels.

    It consumes the output of :class:`custom.inferers.PHMDiffTrainingInferer`
    (:meth:`custom.networks.nets.PHMDiffSynthesizer.training_outputs`): a sequence of
    :class:`custom.networks.nets.LevelOutput`, one per level, finest first (``input[ℓ].level == ℓ``); it reads
    their ``prediction``, ``regression_target``, ``keep_mask`` and ``features``.

    Args:
        mmd_weight: λ, weight of the cross-level MMD (default 0.1); 0 switches it off.
        masked_weight: weight of masked-token reconstruction in the denoising loss (default 0.1).
        level_weights: weight of each level's denoising loss, finest first; None weighs all levels 1.
        mmd_bandwidths: fixed MMD bandwidths, None for the median heuristic (see :class:`GaussianMMDLoss`).
        distance: "l2" or "l1", the denoising loss's distance (see :class:`MaskedDenoisingLoss`).
        reduction: "mean", "sum" or "none" over the batch for the denoising term (the MMD is a batch statistic
            and is added to every sample for "none").

    Example::

        >>> outputs = PHMDiffTrainingInferer(mask_ratio=0.5)(source, synthesizer, target=target)
        >>> loss = PHMDiffLoss(mmd_weight=0.1)(outputs, target)
    """

    def __init__(
        self,
        mmd_weight: float = 0.1,
        masked_weight: float = 0.1,
        level_weights: Sequence[float] | None = None,
        mmd_bandwidths: Sequence[float] | None = None,
        distance: str = "l2",
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=_check_reduction(reduction))
        if mmd_weight < 0:
            raise ValueError(f"mmd_weight must be >= 0, got {mmd_weight}.")
        if level_weights is not None and any(w < 0 for w in level_weights):
            raise ValueError(f"level_weights must be >= 0, got {level_weights}.")
        self.mmd_weight = mmd_weight
        self.level_weights = None if level_weights is None else tuple(float(w) for w in level_weights)
        self.denoising = MaskedDenoisingLoss(
            masked_weight=masked_weight, distance=distance, reduction=LossReduction.NONE
        )
        self.mmd = GaussianMMDLoss(bandwidths=mmd_bandwidths)

    def forward(self, input: Sequence[LevelOutput], target: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: the inferer's per-level records, finest first (see above).
            target: the full-resolution target, unused (the per-level targets are in ``input``); accepted so that
                ``SupervisedTrainer`` can call ``loss_function(pred, label)``.

        Raises:
            TypeError: ``input`` is not a sequence of :class:`LevelOutput` (e.g. the former dict of ``pred_ℓ`` keys).
            ValueError: ``input`` is empty, its levels are not 0, 1, ... in order, or ``level_weights`` does not
                have one entry per level.
        """
        levels = _check_levels(input)
        if self.level_weights is not None and len(self.level_weights) != len(levels):
            raise ValueError(f"level_weights must have {len(levels)} entries, got {len(self.level_weights)}.")
        loss = torch.zeros((), device=levels[0].prediction.device)
        for out in levels:
            w = 1.0 if self.level_weights is None else self.level_weights[out.level]
            loss = loss + w * self.denoising(out.prediction, out.regression_target, out.keep_mask)
        if self.mmd_weight > 0:
            for finer, coarser in zip(levels[:-1], levels[1:]):
                loss = loss + self.mmd_weight * self.mmd(finer.features, coarser.features)
        return _reduce(loss, self.reduction)


def _check_levels(input: object) -> Sequence[LevelOutput]:
    """``input`` itself if it is a non-empty sequence of :class:`LevelOutput` for levels 0, 1, ... in order."""
    expected = "a sequence of LevelOutput, one per level, finest first (PHMDiffTrainingInferer's output)"
    if isinstance(input, LevelOutput):
        raise TypeError(f"input must be {expected}, got a single LevelOutput (wrap it in a list).")
    if isinstance(input, (Mapping, str, bytes)) or not isinstance(input, Sequence):
        raise TypeError(f"input must be {expected}, got {type(input).__name__}.")
    if len(input) == 0:
        raise ValueError(f"input must be {expected}, got an empty sequence.")
    for index, item in enumerate(input):
        if not isinstance(item, LevelOutput):
            raise TypeError(f"input must be {expected}, got {type(item).__name__} at index {index}.")
        if item.level != index:
            raise ValueError(f"input must be {expected}: index {index} holds level {item.level}.")
    return input
