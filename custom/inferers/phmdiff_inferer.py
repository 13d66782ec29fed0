"""Training-time inferer of PHMDiff (arXiv 2507.16579): one noised, masked denoising pass per pyramid level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from custom.networks.nets import LevelOutput, PHMDiffSynthesizer

__all__ = ["PHMDiffTrainingInferer"]


class PHMDiffTrainingInferer(Inferer):
    """
    Training step of PHMDiff (arXiv 2507.16579) for MONAI's ``SupervisedTrainer``: holds the training options and
    calls :meth:`custom.networks.nets.PHMDiffSynthesizer.training_outputs`, which documents the pass (per level,
    coarsest first: timestep, noise, prior from the coarser level, masked denoising).

    Timesteps, noise and masks come from torch's global RNG (``monai.utils.set_determinism`` makes runs repeatable).

    Args:
        mask_ratio: fraction of tokens dropped before the encoder, one value or one per level (finest first);
            paper: "random, high-proportion masks"; default 0.5 (MaskDiT). Use 0 for the final unmasking phase.
        prior_noise_std: upper end of the conditioning-augmentation noise std (intensities in [-1, 1]); default 0.1.
        prior_source: "model" (default, the network's own detached estimate of the coarser level, as at sampling)
            or "target" (the down-sampled ground truth): where the finer levels' priors come from.
        timestep_power: k in the training timesteps t = T − 1 − ⌊T·uᵏ⌋, u ~ U[0, 1); 1 (default) is uniform, larger
            values draw high-noise timesteps more often.
        crop_size: train the finest level on a random window of this many pixels (one value or one per dimension,
            multiples of the finest token stride) while the coarser levels see the whole image; None (default): the
            whole image.

    Returns (``__call__``):
        a list of :class:`custom.networks.nets.LevelOutput`, one per level, finest first (``outputs[ℓ].level == ℓ``):
        prediction, regression target, keep mask, pooled encoder features and timesteps of that level, what
        :class:`custom.losses.PHMDiffLoss` takes.

    Example::

        >>> inferer = PHMDiffTrainingInferer(mask_ratio=0.5)
        >>> outputs = inferer(source, synthesizer, target=target)
        >>> loss = PHMDiffLoss()(outputs, target)
    """

    def __init__(
        self,
        mask_ratio: Sequence[float] | float = 0.5,
        prior_noise_std: float = 0.1,
        prior_source: str = "model",
        timestep_power: float = 1.0,
        crop_size: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        PHMDiffSynthesizer.check_training_options(mask_ratio, prior_noise_std, prior_source, timestep_power, crop_size)
        self.crop_size = crop_size
        self.prior_source = prior_source
        self.mask_ratio = mask_ratio
        self.prior_noise_std = prior_noise_std
        self.timestep_power = timestep_power

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, target: torch.Tensor, *args: Any, **kwargs: Any
    ) -> list[LevelOutput]:
        """
        Args:
            inputs: source images (B, in_channels, *spatial), intensities in about [-1, 1].
            network: a :class:`custom.networks.nets.PHMDiffSynthesizer` (or a wrapper with ``.module``).
            target: target images (B, out_channels, *spatial), intensities in [-1, 1].
        """
        synth = network.module if hasattr(network, "module") else network
        if not callable(getattr(synth, "training_outputs", None)):
            raise TypeError(
                f"network must be a PHMDiffSynthesizer (or wrap one as .module), got {type(synth).__name__}."
            )
        return synth.training_outputs(
            inputs,
            target,
            self.mask_ratio,
            self.prior_noise_std,
            self.prior_source,
            self.timestep_power,
            self.crop_size,
        )
