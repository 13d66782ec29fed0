"""Shared pieces of ``benchmarks/run.py``: the bundle's networks and data, the baselines, one training step each.

Everything the benchmark trains or times is built here from the bundle's own configs (``bundle/configs``), so the
numbers follow the shipped defaults: preset, patch sizes, levels, prediction type, learning rate, slice sampling.
Not part of the test suite.
"""

from __future__ import annotations

import functools
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from monai.bundle import ConfigParser  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402
from monai.networks.nets.diffusion_model_unet import DiffusionModelUNet  # noqa: E402
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402

from custom.networks.layers.diffusion import convert_prediction  # noqa: E402
from custom.networks.layers.pyramid import crop_to_size, pad_to_multiple  # noqa: E402
from custom.networks.nets import PHMDiffSynthesizer  # noqa: E402


TRAIN_CONFIG = ROOT / "bundle" / "configs" / "train.json"
INFER_CONFIG = ROOT / "bundle" / "configs" / "inference.json"
DEMO_SIZE = [99, 117]  # an axial slice of the 2 mm demo volumes (99 x 117 x 95)
BATCH = 8  # volumes_per_batch 2 x slices_per_volume 4 of train.json

# A conditional DDPM of the size of Model Zoo's 2-D generative bundles (e.g. brats_mri_generative_diffusion's
# diffusion UNet, MONAI's 2d_ddpm tutorial): source concatenated to x_t on the channel axis, ε prediction.
DDPM_UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 2,
    "out_channels": 1,
    "channels": (64, 128, 128),
    "attention_levels": (False, False, True),
    "num_res_blocks": 2,
    "num_head_channels": 32,
    "norm_num_groups": 32,
}
DDPM_MULTIPLE = [4, 4]  # two down-samplings: pad 99 x 117 to 100 x 120 (replicate), crop back
# pix2pix's generator without the adversary: a MONAI residual UNet trained with L1.
UNET_L1_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 1,
    "channels": (32, 64, 128, 256),
    "strides": (2, 2, 2),
    "num_res_units": 2,
}
UNET_MULTIPLE = [8, 8]


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def bundle_parser(config: Path = TRAIN_CONFIG, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(config))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def bundle_network_config(config: Path = TRAIN_CONFIG) -> dict:
    """The ``network_def`` arguments of a bundle config (references resolved), without ``_target_``."""
    parser = bundle_parser(config)
    parser.parse()
    args = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser["network_def"] if k != "_target_"}
    return args


def make_phmdiff(**overrides) -> PHMDiffSynthesizer:
    """The bundle's ``network_def`` (train.json) with overrides, e.g. ``num_levels=1, patch_size=[8]``."""
    args = bundle_network_config()
    args.update(overrides)
    return PHMDiffSynthesizer(**args)


@functools.lru_cache(maxsize=1)
def finest_token_stride() -> int:
    """Pixels per token side at the finest level of the bundle's network: the grid that blockiness is measured on."""
    return make_phmdiff().denoiser.token_stride(0)


def bundle_learning_rate() -> float:
    return float(bundle_parser()["learning_rate"])


# The baselines' learning rate: that of their first benchmark (bundle 0.1.x), kept when the bundle's changed.
BASELINE_LEARNING_RATE = 2e-4
# the hourglass at half resolution (a 2x pixel-unshuffle stem, stages at 1/2 and 1/4) with the S preset's token
# stride 8, so that blockiness is measured on its token grid too (finest_token_stride is the bundle's)
PIXEL_UNSHUFFLE = {"pixel_unshuffle": 2, "conv_channels": [16, 32]}


def bundle_component(config_id: str, **overrides):
    """A component of train.json (e.g. ``loss``, ``train#inferer``) with some of its arguments overridden."""
    parser = bundle_parser()
    for key, value in overrides.items():
        parser[f"{config_id}#{key}"] = value
    parser.parse()
    return parser.get_parsed_content(config_id)


# ---------------------------------------------------------------------------------------------------------------
# One optimiser step per model (``step(source, target) -> loss``), all AdamW at the bundle's learning rate
# ---------------------------------------------------------------------------------------------------------------


class _OptimiserStep:
    """``train_on`` one optimiser step on given tensors; ``step()`` times one on the fixed ``source``/``target``,
    as ``training_step.py`` does. Subclasses set ``model``, ``opt``, ``source``, ``target`` and define ``loss``."""

    def loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_on(self, source: torch.Tensor, target: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(source, target)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def step(self) -> float:
        start = time.perf_counter()
        self.train_on(self.source, self.target)
        return time.perf_counter() - start


class PHMDiffStep(_OptimiserStep):
    """The bundle's training step (PHMDiffTrainingInferer + PHMDiffLoss + AdamW); ``step()`` of training_step.py."""

    def __init__(
        self,
        synth: PHMDiffSynthesizer,
        batch: int = BATCH,
        size: list[int] = DEMO_SIZE,
        lr: float | None = None,
        inferer_overrides: dict | None = None,
        loss_overrides: dict | None = None,
    ) -> None:
        self.synth = synth.train()
        # the bundle's inferer and loss, some arguments overridden (e.g. {"mask_ratio": 0.0})
        self.inferer = bundle_component("train#inferer", **(inferer_overrides or {}))
        self.loss_fn = bundle_component("loss", **(loss_overrides or {}))
        self.opt = torch.optim.AdamW(self.synth.parameters(), lr=lr or bundle_learning_rate(), weight_decay=0.0)
        self.source = torch.rand(batch, 1, *size) * 2 - 1
        self.target = torch.rand(batch, 1, *size) * 2 - 1
        self.model = self.synth

    def loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.inferer(source, self.synth, target=target), target)

    @torch.inference_mode()
    def predict(
        self, source: torch.Tensor, seed: int = 0, one_step: bool = False, steps: int | None = None
    ) -> torch.Tensor:
        """The synthesiser's DDIM sample with sampling seed ``seed`` and ``steps`` steps per level (None: the
        synthesiser's own); ``one_step``: one step per level (the x₀ estimate at t = T − 1, "regression sampling")."""
        self.synth.eval()
        self.synth.seed = seed
        own = self.synth.num_inference_steps
        try:
            self.synth.set_num_inference_steps(1 if one_step else steps or own)
            return self.synth(source)
        finally:
            self.synth.set_num_inference_steps(own)
            self.synth.train()


class DDPMUNetStep(_OptimiserStep):
    """Conditional DDPM with MONAI's DiffusionModelUNet: ε-MSE on concat[x_t, source], 1000 linear-β steps."""

    def __init__(
        self, batch: int = BATCH, size: list[int] = DEMO_SIZE, lr: float | None = None, ddim_steps: int = 20
    ) -> None:
        self.model = DiffusionModelUNet(**DDPM_UNET_ARGS).train()
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.ddim_steps = ddim_steps
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr or BASELINE_LEARNING_RATE, weight_decay=0.0)
        self.source = torch.rand(batch, 1, *size) * 2 - 1
        self.target = torch.rand(batch, 1, *size) * 2 - 1

    def loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        src, x0 = pad_to_multiple(source, DDPM_MULTIPLE), pad_to_multiple(target, DDPM_MULTIPLE)
        t = torch.randint(0, self.scheduler.num_train_timesteps, (x0.shape[0],))
        noise = torch.randn_like(x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        return F.mse_loss(self.model(torch.cat([x_t, src], 1), t), noise)

    @torch.inference_mode()
    def predict(self, source: torch.Tensor, seed: int = 0, one_step: bool = False) -> torch.Tensor:
        """DDIM sampling with ``ddim_steps`` steps (η = 0) from seeded noise; ``one_step``: the x₀ estimate of one
        network call at t = T − 1."""
        self.model.eval()
        src = pad_to_multiple(source, DDPM_MULTIPLE)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(src.shape, generator=gen)
        ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=True)
        ddim.set_timesteps(self.ddim_steps)
        last = torch.tensor(ddim.num_train_timesteps - 1)
        for t in [last] if one_step else ddim.timesteps:
            eps = self.model(torch.cat([x, src], 1), t.expand(x.shape[0]).long())
            if one_step:
                x = convert_prediction(eps, x, ddim.alphas_cumprod[last], "epsilon", "sample")
            else:
                x, _ = ddim.step(eps, int(t), x)
        self.model.train()
        return crop_to_size(x.clamp(-1, 1), list(source.shape[2:]))


class UNetL1Step(_OptimiserStep):
    """pix2pix's generator without the adversary: MONAI UNet, L1 loss, one pass at inference."""

    def __init__(self, lr: float | None = None) -> None:
        self.model = UNet(**UNET_L1_ARGS).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr or BASELINE_LEARNING_RATE, weight_decay=0.0)

    def loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = crop_to_size(self.model(pad_to_multiple(source, UNET_MULTIPLE)), list(source.shape[2:]))
        return F.l1_loss(pred, target)

    @torch.inference_mode()
    def predict(self, source: torch.Tensor, seed: int = 0) -> torch.Tensor:
        self.model.eval()
        out = crop_to_size(self.model(pad_to_multiple(source, UNET_MULTIPLE)), list(source.shape[2:]))
        self.model.train()
        return out.clamp(-1, 1)


def round_robin(setups: dict, warmup: int, repeats: int) -> dict[str, float]:
    """Median step time per setup, steps interleaved so other load hits every case alike."""
    times: dict[str, list[float]] = {k: [] for k in setups}
    for i in range(warmup + repeats):
        for name, setup in setups.items():
            seconds = setup.step()
            if i >= warmup:
                times[name].append(seconds)
    return {k: statistics.median(v) for k, v in times.items()}


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
