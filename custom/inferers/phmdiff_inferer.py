"""Training-time inferer of PHMDiff (arXiv 2507.16579): one noised, masked denoising pass per pyramid level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.utils import ensure_tuple_rep
from torch import nn

from custom.networks.layers.diffusion import convert_prediction

__all__ = ["PHMDiffTrainingInferer"]


class PHMDiffTrainingInferer(Inferer):
    """
    Training step of PHMDiff (arXiv 2507.16579) for MONAI's ``SupervisedTrainer``: builds the pyramids of source and
    target with the network's own pyramid and goes from the coarsest level to the finest. At every level ℓ it samples
    a timestep and noise, forms x_t = √ᾱ x₀ + √(1−ᾱ) ε, builds the prior (zeros at the coarsest level; else the
    up-sampled clean estimate of level ℓ+1, plus Gaussian noise of a per-sample std drawn from
    [0, ``prior_noise_std``] — conditioning augmentation as in cascaded diffusion, Ho et al., arXiv 2106.15282) and
    runs the denoiser on ``concat[x_t, source, prior]`` with mask ratio r.

    The clean estimate of level ℓ+1 is, with ``prior_source="model"``, the network's own x₀ estimate of that level in
    this very step (detached): an estimate made by the model, as sampling gives the finer level, whose quality
    varies with the coarser level's random t from a regression guess to nearly the truth. With ``"target"`` it is
    the down-sampled ground truth, which the model never gets at inference; measured on the demo data, the finest
    level then learns to copy a prior it is never given and the output stays at the coarse level's blur.

    Timesteps, noise and masks come from torch's global RNG (``monai.utils.set_determinism`` makes runs repeatable).

    Args:
        mask_ratio: fraction of tokens dropped before the encoder, one value or one per level (finest first);
            paper: "random, high-proportion masks"; default 0.5 (MaskDiT). Use 0 for the final unmasking phase.
        prior_noise_std: upper end of the conditioning-augmentation noise std (intensities in [-1, 1]); default 0.1.
        prior_source: "model" (default) or "target": where the finer levels' priors come from (see above).

    Returns (``__call__``):
        a dict with, for every level ℓ (0 = finest), cropped to the level's extent of the unpadded input:
        ``pred_ℓ`` the denoiser output (B, C, *S_ℓ); ``target_ℓ`` its regression target in the network's
        ``prediction_type`` (ε, x₀ or v); ``mask_ℓ`` (B, 1, *S_ℓ), 1 on pixels of kept tokens; ``features_ℓ`` the
        pooled encoder features (B, D); ``timesteps_ℓ`` (B,) the sampled timesteps (for per-quartile logging).

    Example::

        >>> inferer = PHMDiffTrainingInferer(mask_ratio=0.5)
        >>> outputs = inferer(source, synthesizer, target=target)
        >>> loss = PHMDiffLoss()(outputs, target)
    """

    def __init__(
        self, mask_ratio: Sequence[float] | float = 0.5, prior_noise_std: float = 0.1, prior_source: str = "model"
    ) -> None:
        super().__init__()
        if prior_source not in ("model", "target"):
            raise ValueError(f"prior_source must be 'model' or 'target', got {prior_source!r}.")
        self.prior_source = prior_source
        ratios = mask_ratio if isinstance(mask_ratio, Sequence) else [mask_ratio]
        if len(ratios) == 0 or any(not 0.0 <= float(r) < 1.0 for r in ratios):
            raise ValueError(f"mask_ratio must be in [0, 1) (one value or one per level), got {mask_ratio}.")
        if prior_noise_std < 0:
            raise ValueError(f"prior_noise_std must be >= 0, got {prior_noise_std}.")
        self.mask_ratio = mask_ratio
        self.prior_noise_std = prior_noise_std

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, target: torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            inputs: source images (B, in_channels, *spatial), intensities in about [-1, 1].
            network: a :class:`custom.networks.nets.PHMDiffSynthesizer` (or a wrapper with ``.module``).
            target: target images (B, out_channels, *spatial), intensities in [-1, 1].
        """
        synth = network.module if hasattr(network, "module") else network
        num_levels = synth.num_levels
        ratios = ensure_tuple_rep(self.mask_ratio, num_levels)
        if inputs.shape[2:] != target.shape[2:] or inputs.shape[0] != target.shape[0]:
            raise ValueError(f"inputs and target must share batch and spatial size, got {inputs.shape}, {target.shape}.")
        sources = synth.pyramid(inputs)  # L x (B, Cin, *S_l)
        targets = synth.pyramid(target)  # L x (B, Cout, *S_l)
        b = inputs.shape[0]
        alphas = synth.alphas_cumprod.to(device=target.device, dtype=target.dtype)
        view = [b] + [1] * (target.ndim - 1)
        outputs: dict[str, torch.Tensor] = {}
        estimate = torch.zeros(0)  # the coarser level's clean estimate, set by each level for the next
        for level in range(num_levels - 1, -1, -1):
            x0 = targets[level]  # (B, C, *S_l)
            if level < num_levels - 1:
                coarser = targets[level + 1] if self.prior_source == "target" else estimate
                prior = synth.upsample(coarser, list(x0.shape[2:]))  # (B, C, *S_l)
                std = torch.rand(view, device=x0.device, dtype=x0.dtype) * self.prior_noise_std  # (B, 1, ...)
                prior = prior + std * torch.randn_like(prior)
            else:
                prior = torch.zeros_like(x0)
            t = torch.randint(0, synth.num_train_timesteps, (b,), device=x0.device)  # (B,)
            noise = torch.randn_like(x0)
            a_t = alphas[t].reshape(view)  # (B, 1, ...)
            x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise  # (B, C, *S_l)
            pred, mask, features = synth.denoiser(
                torch.cat([x_t, sources[level], prior], dim=1), t, level, float(ratios[level])
            )
            # the model's own clean estimate, detached: the next level's prior, made as sampling makes it
            estimate = convert_prediction(pred.detach(), x_t, a_t, synth.prediction_type, "sample")
            if synth.clip_sample:  # as the sampler clips its x0 estimates
                estimate = estimate.clamp(-1.0, 1.0)
            regression_target = convert_prediction(noise, x_t, a_t, "epsilon", synth.prediction_type)
            outputs[f"pred_{level}"] = pred
            outputs[f"target_{level}"] = regression_target
            outputs[f"mask_{level}"] = mask
            outputs[f"features_{level}"] = features
            outputs[f"timesteps_{level}"] = t
        return outputs
