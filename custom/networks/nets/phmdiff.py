"""PHMDiff: Pyramid Hierarchical Masked Diffusion for cross-modality image synthesis (arXiv 2507.16579).

Sections: the denoiser (a masked diffusion transformer shared by all pyramid levels), size presets, the per-level
training record, and the synthesiser (the bundle's network: coarse-to-fine DDIM sampling around the denoiser, and
the noised, masked training pass over the same pyramid).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from monai.networks.schedulers import DDIMScheduler
from monai.utils import ensure_tuple, ensure_tuple_rep
from torch import nn

from custom.networks.blocks.dit import DiTBlock, FinalLayer, TimestepEmbedder, sincos_position_embedding
from custom.networks.blocks.masking import num_kept_tokens, random_masking, restore_tokens
from custom.networks.layers.diffusion import PREDICTION_TYPES, convert_prediction, counter_normal
from custom.networks.layers.normalization import ChannelLayerNorm
from custom.networks.layers.pyramid import (
    ImagePyramid,
    PyramidUpsample,
    crop_to_size,
    pad_to_multiple,
    depth_to_space,
    space_to_depth,
)

__all__ = [
    "LevelOutput",
    "PHMDiffDenoiser",
    "PHMDiffSynthesizer",
    "PHMDIFF_PRESETS",
    "phmdiff_t",
    "phmdiff_s",
    "phmdiff_b",
]


#################################################################################
#                                  The denoiser                                 #
#################################################################################

HOURGLASS_NORMS = ("group", "channel")  # normalisation in the hourglass's residual blocks and head


class PHMDiffDenoiser(nn.Module):
    """
    The PHMDiff denoiser (arXiv 2507.16579): a diffusion transformer (DiT, adaLN-Zero) with MaskDiT token dropping
    (arXiv 2306.09305), shared by all pyramid levels, inside a convolutional hourglass (HDiT, arXiv 2401.11605;
    U-DiT; U-ViT's pixel path). At level ℓ it sees ``concat[x_t, source, prior]`` on the channel axis, where
    ``prior`` is the up-sampled clean estimate of level ℓ+1 (zeros at the coarsest level), and is told its level by a
    learned level embedding added to the timestep embedding.

    The hourglass: a 3×3 stem and one timestep-conditioned residual block per entry of ``conv_channels`` (MONAI's
    ``DiffusionUNetResnetBlock``), each further entry at half the resolution; the last map is cut into patches of
    ``patch_size`` for the transformer, whose tokens are unpatchified back onto that map; a mirrored decoder with
    skip connections returns to full resolution, where a 3×3 convolution draws the output. So detail below the token
    size has a pixel path. An empty ``conv_channels`` is the
    plain DiT (linear patch embedding and linear unpatchify).

    With ``mask_ratio`` r > 0 a random ``round((1 - r) N)`` of the N tokens of each sample is kept and the transformer
    encoder runs on those only; a light decoder then runs on the full sequence with a learned mask token. The input
    may have any spatial size: it is padded (``pad_mode``) to a multiple of the token stride and the output cropped
    back, and the fixed sin-cos position embedding is computed for the actual token grid (cached per grid).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of the source image.
        out_channels: channels of the target image (and of x_t, the prior and the prediction).
        num_levels: number of pyramid levels L (size of the level embedding).
        patch_size: isotropic patch size on the hourglass's coarsest map, one int for all levels or one per level
            (level 0 = finest); levels with different patch sizes get their own patch embedding and output layer.
        hidden_size: token dimension D, divisible by ``2 * spatial_dims`` and by ``num_heads``.
        depth: number of transformer encoder blocks (0 removes the transformer but for the patch embedding and
            output layer: the ablation that shows what the transformer carries).
        num_heads: attention heads.
        decoder_depth: number of transformer decoder blocks (run on the full sequence).
        mlp_ratio: MLP width as a multiple of ``hidden_size``.
        frequency_embedding_size: sinusoidal features of the timestep embedding.
        pad_mode: padding mode up to a multiple of the token stride ("replicate", "reflect" or "constant").
        conv_channels: channels of the hourglass stages, full resolution (or 1 / ``pixel_unshuffle``) first; each
            further stage halves the resolution, so the token stride is
            ``pixel_unshuffle * patch_size * 2 ** (len(conv_channels) - 1)``. Empty: plain DiT.
        norm_num_groups: groups of the hourglass's group norms (must divide every entry of ``conv_channels``; unused
            with ``hourglass_norm="channel"``).
        hourglass_norm: normalisation in the hourglass's residual blocks and head: "group" (default, MONAI's group
            norm) or "channel" (:class:`~custom.networks.layers.ChannelLayerNorm`, over each voxel's channels, so a
            voxel's features do not depend on the rest of the image: what training on crops needs).
        pixel_unshuffle: factor f of a pixel-unshuffle stem (Shi et al., arXiv 1609.05158): each f-sided block of
            voxels becomes channels before the first convolution, and the head's output channels are shuffled back
            into voxels, so the hourglass runs at 1/f of the resolution (f times the token stride) and still draws
            every voxel. Default 1 (off); needs ``conv_channels``.

    Returns (``forward``):
        ``(prediction, keep_mask, features)``: the prediction (B, out_channels, *spatial); a float mask
        (B, 1, *spatial) that is 1 on pixels of kept (visible) tokens and 0 on dropped ones; the encoder output
        averaged over the kept tokens (B, hidden_size), used by the MMD regulariser.

    Example::

        >>> net = PHMDiffDenoiser(spatial_dims=2, hidden_size=48, depth=2, num_heads=2, conv_channels=(8, 16))
        >>> pred, keep, feat = net(torch.rand(2, 3, 99, 117), torch.tensor([10, 900]), level=0, mask_ratio=0.5)
        >>> pred.shape, keep.shape, feat.shape
        (torch.Size([2, 1, 99, 117]), torch.Size([2, 1, 99, 117]), torch.Size([2, 48]))
        >>> net3d = PHMDiffDenoiser(spatial_dims=3, hidden_size=48, depth=2, num_heads=2, conv_channels=(8,))
        >>> net3d(torch.rand(1, 3, 48, 40, 32), torch.tensor([10]), level=1)[0].shape
        torch.Size([1, 1, 48, 40, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_levels: int = 3,
        patch_size: Sequence[int] | int = 2,
        hidden_size: int = 96,
        depth: int = 6,
        num_heads: int = 4,
        decoder_depth: int = 2,
        mlp_ratio: float = 4.0,
        frequency_embedding_size: int = 256,
        pad_mode: str = "replicate",
        conv_channels: Sequence[int] = (32, 64),
        norm_num_groups: int = 8,
        hourglass_norm: str = "group",
        pixel_unshuffle: int = 1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_levels", num_levels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if depth < 0 or decoder_depth < 0:
            raise ValueError(f"depth and decoder_depth must be >= 0, got depth={depth}, decoder_depth={decoder_depth}.")
        if hidden_size < 1 or hidden_size % (2 * spatial_dims) != 0:
            raise ValueError(f"hidden_size must be a positive multiple of {2 * spatial_dims}, got {hidden_size}.")
        if num_heads < 1 or hidden_size % num_heads != 0:
            raise ValueError(f"num_heads must divide hidden_size={hidden_size}, got {num_heads}.")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}.")
        if pad_mode not in ("replicate", "reflect", "constant"):
            raise ValueError(f"pad_mode must be 'replicate', 'reflect' or 'constant', got {pad_mode!r}.")
        if hourglass_norm not in HOURGLASS_NORMS:
            raise ValueError(f"hourglass_norm must be one of {HOURGLASS_NORMS}, got {hourglass_norm!r}.")
        channels = [int(c) for c in conv_channels]
        if hourglass_norm == "channel":
            norm_num_groups = 1  # MONAI's blocks build group norms, replaced below
        if norm_num_groups < 1 or any(c < 1 or c % norm_num_groups for c in channels):
            raise ValueError(
                f"conv_channels must be positive multiples of norm_num_groups={norm_num_groups}, got {conv_channels}."
            )
        self.pad_mode = pad_mode
        patches = ensure_tuple_rep(patch_size, num_levels)
        if any(int(p) < 1 for p in patches):
            raise ValueError(f"patch_size must hold positive integers, got {patch_size}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.hidden_size = hidden_size
        self.conv_channels = channels
        distinct = sorted({int(p) for p in patches})
        self.patch_sizes: List[int] = [int(p) for p in distinct]  # one patch embedding / output layer per entry
        self.level_to_patch: List[int] = [distinct.index(int(p)) for p in patches]
        integral = isinstance(pixel_unshuffle, (int, float)) and float(pixel_unshuffle).is_integer()
        if isinstance(pixel_unshuffle, bool) or not integral or pixel_unshuffle < 1:
            raise ValueError(f"pixel_unshuffle must be a positive integer, got {pixel_unshuffle!r}.")
        if pixel_unshuffle > 1 and not channels:
            raise ValueError(f"pixel_unshuffle={pixel_unshuffle} needs conv_channels (the plain DiT has no stem).")
        self.pixel_unshuffle = int(pixel_unshuffle)
        # hourglass stride before the patches
        self.downsampling = self.pixel_unshuffle * 2 ** (len(channels) - 1) if channels else 1

        conv = Conv[Conv.CONV, spatial_dims]
        embed_channels = 2 * out_channels + in_channels  # concat[x_t, source, prior]
        shuffled = self.pixel_unshuffle**spatial_dims  # voxels folded into channels by the stem's pixel unshuffle
        token_channels = channels[-1] if channels else out_channels  # what a token is unpatchified to
        self.t_embedder = TimestepEmbedder(hidden_size, frequency_embedding_size)
        self.level_embed = nn.Embedding(num_levels, hidden_size)

        # hourglass: stem and encoder stages (each after the first halves the resolution), decoder with skips
        self.stem = nn.ModuleList(
            [conv(embed_channels * shuffled, channels[0], kernel_size=3, padding=1)] if channels else []
        )
        self.encoder = nn.ModuleList(
            [
                DiffusionUNetResnetBlock(
                    spatial_dims, channels[max(i - 1, 0)], hidden_size, c, down=i > 0, norm_num_groups=norm_num_groups
                )
                for i, c in enumerate(channels)
            ]
        )
        self.decoder = nn.ModuleList(
            [
                DiffusionUNetResnetBlock(
                    spatial_dims,
                    c + (channels[i + 1] if i + 1 < len(channels) else c),
                    hidden_size,
                    c,
                    norm_num_groups=norm_num_groups,
                )
                for i, c in reversed(list(enumerate(channels)))
            ]
        )
        self.head = nn.ModuleList(
            [
                nn.GroupNorm(norm_num_groups, channels[0]),
                nn.SiLU(),
                conv(channels[0], out_channels * shuffled, 3, padding=1),
            ]
            if channels
            else []
        )

        patch_in = channels[-1] if channels else embed_channels
        self.patch_embeds = nn.ModuleList(
            [conv(patch_in, hidden_size, kernel_size=p, stride=p) for p in self.patch_sizes]
        )
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.decoder_blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.final_layers = nn.ModuleList(
            [FinalLayer(hidden_size, p**spatial_dims * token_channels) for p in self.patch_sizes]
        )
        self.token_channels = token_channels
        self.hourglass_norm = hourglass_norm
        if hourglass_norm == "channel":  # per-voxel statistics: a crop in training sees what the whole image sees
            for block in list(self.encoder) + list(self.decoder):
                block.norm1 = ChannelLayerNorm(block.norm1.num_channels)
                block.norm2 = ChannelLayerNorm(block.norm2.num_channels)
            if len(self.head) > 0:
                self.head[0] = ChannelLayerNorm(channels[0])
        self._pos_cache: Dict[str, torch.Tensor] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation; adaLN, output layers and the hourglass's last convolution of every residual block
        and of the head are zero, so every block is the identity and the output is 0."""

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        for module in [self.t_embedder, self.level_embed, self.blocks, self.decoder_blocks, self.final_layers]:
            module.apply(_basic_init)
        for embed in self.patch_embeds:  # like nn.Linear on the flattened patch
            nn.init.xavier_uniform_(embed.weight.view(embed.weight.shape[0], -1))
            nn.init.zeros_(embed.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.level_embed.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for block in list(self.blocks) + list(self.decoder_blocks):
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in self.final_layers:
            for lin in (layer.adaLN_modulation[-1], layer.linear):
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
        if len(self.head) > 0:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def position_embedding(
        self, grid: List[int], device: torch.device, dtype: torch.dtype, offset: List[int]
    ) -> torch.Tensor:
        """Fixed sin-cos embedding (1, prod(grid), D) of a token grid whose first token sits at grid coordinates
        ``offset``, cached per grid, offset, device and dtype."""
        key = f"{grid}|{offset}|{device}|{dtype}"
        if key not in self._pos_cache:
            with torch.no_grad():
                self._pos_cache[key] = sincos_position_embedding(grid, self.hidden_size, device, dtype, offset=offset)
        return self._pos_cache[key]

    def token_stride(self, level: int) -> int:
        """Pixels per token side at ``level``: the hourglass's down-sampling times the level's patch size."""
        return self.downsampling * self.patch_sizes[self.level_to_patch[level]]

    def _embed(self, x: torch.Tensor, level: int) -> torch.Tensor:
        index = self.level_to_patch[level]
        out = x
        for i, embed in enumerate(self.patch_embeds):
            if i == index:
                out = embed(x)
        return out

    def _output(self, x: torch.Tensor, c: torch.Tensor, level: int) -> torch.Tensor:
        index = self.level_to_patch[level]
        out = x
        for i, layer in enumerate(self.final_layers):
            if i == index:
                out = layer(x, c)
        return out

    def unpatchify(self, x: torch.Tensor, grid: List[int], patch: int) -> torch.Tensor:
        """Tokens (B, N, p^d * C) to a map (B, C, *grid * p), C = ``token_channels``."""
        nd = len(grid)
        b = x.shape[0]
        x = x.reshape([b] + grid + [patch] * nd + [self.token_channels])  # (B, *grid, *patch, C)
        perm = [0, 2 * nd + 1]
        for i in range(nd):
            perm += [1 + i, 1 + nd + i]
        x = x.permute(perm)  # (B, C, g1, p1, g2, p2[, g3, p3])
        return x.reshape([b, self.token_channels] + [g * patch for g in grid])  # (B, C, *grid * p)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        level: int = 0,
        mask_ratio: float = 0.0,
        grid_offset: Optional[List[int]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``concat[x_t, source, prior]`` of shape (B, 2 * out_channels + in_channels, *spatial).
            t: diffusion timesteps (B,).
            level: pyramid level, 0 = finest.
            mask_ratio: fraction r in [0, 1) of tokens dropped before the encoder (0 at inference).
            grid_offset: when ``x`` is a window of a larger image (crop training), the token-grid coordinates of its
                first token in that image, so its tokens get the position embedding they have in the whole image;
                default 0 (``x`` is the whole image).
        """
        if level < 0 or level >= self.num_levels:
            raise ValueError(f"level must be in [0, {self.num_levels}), got {level}.")
        if mask_ratio < 0.0 or mask_ratio >= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        size: List[int] = list(x.shape[2:])
        patch = self.patch_sizes[self.level_to_patch[level]]
        stride = self.token_stride(level)
        h = pad_to_multiple(x, [stride] * self.spatial_dims, self.pad_mode)  # (B, Cin, *padded)
        grid = [s // stride for s in list(h.shape[2:])]
        b = h.shape[0]
        c = self.t_embedder(t) + self.level_embed.weight[level].unsqueeze(0)  # (B, D)

        skips: List[torch.Tensor] = []
        if self.pixel_unshuffle > 1:
            h = space_to_depth(h, self.pixel_unshuffle)  # (B, Cin * f^d, *padded / f)
        for stem in self.stem:
            h = stem(h)  # (B, C0, *padded / f)
        for block in self.encoder:
            h = block(h, c)  # (B, Ci, *padded / (f 2^i))
            skips.append(h)

        tokens = self._embed(h, level).flatten(2).transpose(1, 2)  # (B, N, D)
        offset = [0] * self.spatial_dims if grid_offset is None else grid_offset
        pos = self.position_embedding(grid, tokens.device, tokens.dtype, offset)  # (1, N, D)
        tokens = tokens + pos  # (B, N, D)

        n = tokens.shape[1]
        num_keep = num_kept_tokens(n, mask_ratio)
        ids_restore = torch.zeros(0, dtype=torch.long, device=tokens.device)
        keep_mask = torch.ones(b, n, dtype=tokens.dtype, device=tokens.device)  # (B, N)
        if num_keep < n:
            tokens, keep_mask, ids_restore = random_masking(tokens, num_keep)  # (B, K, D)

        for block in self.blocks:
            tokens = block(tokens, c)  # (B, K, D)
        features = tokens.mean(dim=1)  # (B, D)

        if num_keep < n:
            tokens = restore_tokens(tokens, ids_restore, self.mask_token)  # (B, N, D)
        tokens = tokens + pos  # (B, N, D)
        for block in self.decoder_blocks:
            tokens = block(tokens, c)  # (B, N, D)
        out = self.unpatchify(self._output(tokens, c, level), grid, patch)  # (B, C_last or C_out, *padded / (f 2^k))

        for i, block in enumerate(self.decoder):
            skip = skips[len(skips) - 1 - i]
            if i > 0:
                out = F.interpolate(out, size=list(skip.shape[2:]), mode="nearest")
            out = block(torch.cat([out, skip], dim=1), c)  # (B, Ci, *padded / (f 2^i))
        for layer in self.head:
            out = layer(out)  # (B, C_out * f^d, *padded / f)
        if self.pixel_unshuffle > 1:
            out = depth_to_space(out, self.pixel_unshuffle)  # (B, C_out, *padded)

        mask = keep_mask.reshape([b, 1] + grid)  # (B, 1, *grid)
        for i in range(self.spatial_dims):
            mask = mask.repeat_interleave(stride, dim=2 + i)  # (B, 1, *padded)
        return crop_to_size(out, size), crop_to_size(mask, size), features


# TorchScript needs the type of the (initially empty) cache; a string annotation is not resolved under
# ``from __future__ import annotations``, so the class gets the real type here.
PHMDiffDenoiser.__annotations__["_pos_cache"] = Dict[str, torch.Tensor]


#################################################################################
#                                  Size presets                                 #
#################################################################################


def _preset(defaults: Dict[str, object], kwargs: dict) -> PHMDiffDenoiser:
    merged = dict(defaults)
    merged.update({k: v for k, v in kwargs.items() if v is not None})
    return PHMDiffDenoiser(**merged)


def phmdiff_t(**kwargs) -> PHMDiffDenoiser:
    """Tiny (tests, smoke runs): D=48, 2 encoder blocks, 2 heads, 1 decoder block, hourglass (8, 16)."""
    return _preset(
        {"hidden_size": 48, "depth": 2, "num_heads": 2, "decoder_depth": 1, "conv_channels": (8, 16)}, kwargs
    )


def phmdiff_s(**kwargs) -> PHMDiffDenoiser:
    """Small (default, trains on a CPU): D=128, 6 encoder blocks, 4 heads, 1 decoder block, hourglass (8, 16, 32)."""
    return _preset(
        {"hidden_size": 128, "depth": 6, "num_heads": 4, "decoder_depth": 1, "conv_channels": (8, 16, 32)}, kwargs
    )


def phmdiff_b(**kwargs) -> PHMDiffDenoiser:
    """Base (GPU): D=384, 12 encoder blocks, 6 heads, 2 decoder blocks, hourglass (64, 128)."""
    return _preset(
        {"hidden_size": 384, "depth": 12, "num_heads": 6, "decoder_depth": 2, "conv_channels": (64, 128)}, kwargs
    )


PHMDIFF_PRESETS: Dict[str, Callable[..., PHMDiffDenoiser]] = {"T": phmdiff_t, "S": phmdiff_s, "B": phmdiff_b}


#################################################################################
#                          The per-level training record                        #
#################################################################################

PRIOR_SOURCES = ("model", "target")  # where the finer levels' training priors come from


class LevelOutput(NamedTuple):
    """
    What one pyramid level of a training pass (:meth:`PHMDiffSynthesizer.training_outputs`) gives the loss
    (:class:`custom.losses.PHMDiffLoss`). Spatial sizes S_ℓ = ceil(S / 2**ℓ) are the level's extent of the unpadded
    input; B is the batch size.

    A ``NamedTuple`` rather than a dataclass so that generic batch tools keep working on a trainer output that holds
    it: MONAI's ``decollate_batch`` (``SupervisedTrainer(decollate=True)``, its default) and torch's pytree utilities
    handle tuples but raise on, or pass over, other objects. It is immutable; read the fields by name.

    Attributes:
        level: the pyramid level ℓ, 0 = finest.
        prediction: the denoiser output (B, C_out, *S_ℓ), in the network's ``prediction_type``.
        regression_target: what ``prediction`` regresses to (B, C_out, *S_ℓ): ε, x₀ or v of the sampled noise.
        keep_mask: (B, 1, *S_ℓ), 1 on pixels of kept (visible) tokens and 0 on dropped ones.
        features: the encoder output averaged over the kept tokens (B, hidden_size), for the cross-level MMD.
        timesteps: the sampled diffusion timesteps (B,), integers in [0, ``num_train_timesteps``).
    """

    level: int
    prediction: torch.Tensor
    regression_target: torch.Tensor
    keep_mask: torch.Tensor
    features: torch.Tensor
    timesteps: torch.Tensor


#################################################################################
#                                  The synthesiser                              #
#################################################################################


class PHMDiffSynthesizer(nn.Module):
    """
    The PHMDiff synthesiser (arXiv 2507.16579), the network of the bundle: ``forward(source)`` returns the
    synthesised target with the spatial shape of ``source`` by coarse-to-fine sampling over an image pyramid.
    The coarsest level is sampled first with a zero prior; each finer level is then sampled conditioned on its
    source level and on the up-sampled clean estimate of the level below. Each level is sampled with DDIM
    (Song et al., arXiv 2010.02502) using the noise schedule and timesteps of MONAI's
    :class:`~monai.networks.schedulers.DDIMScheduler`.

    The trainable part is ``self.denoiser`` (:class:`PHMDiffDenoiser`); the sampling constants are non-persistent
    buffers (they follow ``.to(device)`` but are not in the ``state_dict``), so the ``state_dict`` is the single
    checkpoint format for training, inference, export and MONAI Label, whatever ``num_inference_steps``.

    Public interface: ``forward`` (sampling); :meth:`training_outputs` (one training pass, a list of
    :class:`LevelOutput`, what :class:`custom.inferers.PHMDiffTrainingInferer` calls);
    :meth:`check_training_options`; :meth:`set_num_inference_steps`; the attribute ``denoiser`` (public: benchmarks
    and tests time or inspect it alone, e.g. ``denoiser.token_stride(0)``); and the read-only settings
    ``spatial_dims``, ``out_channels``, ``num_levels``, ``prediction_type``, ``num_train_timesteps``,
    ``num_inference_steps``, ``seed``, ``eta``, ``clip_sample``, ``prior_noise_std``. The pyramid (``pyramid``,
    ``upsample``) and the schedule buffers (``alphas_cumprod``, ``timesteps``, ``alpha_bar_t``, ``alpha_bar_prev``)
    are implementation details of these methods.

    Sampling noise is a pure function of ``(seed, level, step, voxel position)`` (:func:`counter_normal`): the same
    seed gives the bit-identical image whatever torch's global RNG state, a slice gets the same noise whatever batch
    it is in, and ``torch.jit.script(synth)`` reproduces the eager result exactly. Sampling runs without gradients
    and works under ``torch.inference_mode()``.

    Any input size works: level ℓ has size ``ceil(S / 2**ℓ)`` and the denoiser pads each level only to a multiple of
    that level's token stride (``pad_mode``) and crops its output back, so no level pays for padding of the others.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of the source image.
        out_channels: channels of the target image.
        num_levels: pyramid levels L (paper: a multi-scale pyramid with scale factor 0.5; default 3).
        patch_size: isotropic patch size on the hourglass's coarsest map, one for all levels or one per level
            (level 0 = finest). Default 2.
        preset: size preset name in ``PHMDIFF_PRESETS`` ("T", "S", "B"); default "S".
        hidden_size: overrides the preset's token dimension.
        depth: overrides the preset's number of encoder blocks.
        num_heads: overrides the preset's number of attention heads.
        decoder_depth: overrides the preset's number of decoder blocks.
        mlp_ratio: MLP width as a multiple of ``hidden_size``; default 4.
        conv_channels: overrides the preset's hourglass channels (full resolution first; empty: plain DiT).
        num_train_timesteps: diffusion steps T of training; default 1000.
        schedule: MONAI noise schedule name ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine");
            default "linear_beta" (β from 1e-4 to 2e-2, as DDPM).
        num_inference_steps: DDIM steps per level; default 3: with the shipped weights on the demo test split,
            3 steps gave 1.1 dB more PSNR inside the brain than 10, with fewer invented textures, at under a third of
            the network calls (``benchmarks/results/quality_shipped.json``, ``steps_sweep``). Changing it later
            (``set_num_inference_steps``) needs no new checkpoint.
        seed: seed of the sampling noise; default 0.
        prediction_type: what the denoiser predicts: "epsilon" (paper: the backbone predicts noise), "sample" (x₀) or
            "v_prediction".
        eta: DDIM stochasticity η (0 = deterministic DDIM); default 0.
        clip_sample: clamp the x₀ estimate to [-1, 1] (intensities are scaled to [-1, 1]); default True.
        prior_noise_std: std of Gaussian noise added to the up-sampled prior at inference (conditioning
            augmentation, Ho et al. 2021); default 0. Training does not use it: :meth:`training_outputs` takes its
            own ``prior_noise_std``, the upper end of the std it draws per sample.
        pad_mode: padding mode for level sizes that are not a multiple of their token stride; default "replicate".
        hourglass_norm: "group" (default) or "channel": the hourglass's normalisation (see :class:`PHMDiffDenoiser`).
        pixel_unshuffle: factor of the hourglass's pixel-unshuffle stem (see :class:`PHMDiffDenoiser`); default 1.

    Example::

        >>> synth = PHMDiffSynthesizer(spatial_dims=2, preset="T", num_inference_steps=2).eval()
        >>> synth(torch.rand(1, 1, 99, 117) * 2 - 1).shape
        torch.Size([1, 1, 99, 117])
        >>> synth3d = PHMDiffSynthesizer(spatial_dims=3, preset="T", patch_size=2, num_inference_steps=2).eval()
        >>> synth3d(torch.rand(1, 1, 48, 40, 32)).shape
        torch.Size([1, 1, 48, 40, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_levels: int = 3,
        patch_size: Sequence[int] | int = 2,
        preset: str = "S",
        hidden_size: Optional[int] = None,
        depth: Optional[int] = None,
        num_heads: Optional[int] = None,
        decoder_depth: Optional[int] = None,
        mlp_ratio: Optional[float] = None,
        conv_channels: Optional[Sequence[int]] = None,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        num_inference_steps: int = 3,
        seed: int = 0,
        prediction_type: str = "epsilon",
        eta: float = 0.0,
        clip_sample: bool = True,
        prior_noise_std: float = 0.0,
        pad_mode: str = "replicate",
        hourglass_norm: str = "group",
        pixel_unshuffle: int = 1,
    ) -> None:
        super().__init__()
        if preset not in PHMDIFF_PRESETS:
            raise ValueError(f"preset must be one of {sorted(PHMDIFF_PRESETS)}, got {preset!r}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}.")
        if not 1 <= num_inference_steps <= num_train_timesteps:
            allowed = f"[1, num_train_timesteps={num_train_timesteps}]"
            raise ValueError(f"num_inference_steps must be in {allowed}, got {num_inference_steps}.")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}.")
        if prior_noise_std < 0:
            raise ValueError(f"prior_noise_std must be >= 0, got {prior_noise_std}.")
        self.denoiser = PHMDIFF_PRESETS[preset](
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            num_levels=num_levels,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            decoder_depth=decoder_depth,
            mlp_ratio=mlp_ratio,
            conv_channels=conv_channels,
            pad_mode=pad_mode,
            hourglass_norm=hourglass_norm,
            pixel_unshuffle=pixel_unshuffle,
        )
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.prediction_type = prediction_type
        self.num_train_timesteps = num_train_timesteps
        self.seed = seed
        self.eta = eta
        self.clip_sample = clip_sample
        self.prior_noise_std = prior_noise_std
        self.pyramid = ImagePyramid(spatial_dims, num_levels)
        self.upsample = PyramidUpsample(spatial_dims)

        self.scheduler_args = {"num_train_timesteps": num_train_timesteps, "schedule": schedule}
        scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.num_inference_steps = num_inference_steps
        self.set_num_inference_steps(num_inference_steps)

    @torch.jit.unused
    def set_num_inference_steps(self, num_inference_steps: int) -> None:
        """(Re)build the DDIM step pairs t_i → t_{i+1} (the last one to ᾱ = 1) from MONAI's DDIM timesteps, offset to
        "trailing" spacing (Lin et al., arXiv 2305.08891): n steps evenly T/n apart from t = T − 1 down to
        t = T/n − 1, not to t = 0, so no step is spent where x_t is already the clean image. One step is the
        one-step x₀ estimate at t = T − 1."""
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}."
            )
        offset = self.num_train_timesteps // num_inference_steps - 1
        scheduler = DDIMScheduler(**self.scheduler_args, steps_offset=offset)
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps.long()
        alphas = scheduler.alphas_cumprod.float()
        prev = torch.cat([alphas[timesteps[1:]], torch.ones(1)])  # set_alpha_to_one at the end of the chain
        device = self.alphas_cumprod.device
        self.register_buffer("timesteps", timesteps.to(device), persistent=False)
        self.register_buffer("alpha_bar_t", alphas[timesteps].to(device), persistent=False)
        self.register_buffer("alpha_bar_prev", prev.to(device), persistent=False)
        self.num_inference_steps = num_inference_steps

    def _sample_level(self, source: torch.Tensor, prior: torch.Tensor, level: int) -> torch.Tensor:
        """DDIM sampling of one level; returns the final clean estimate (B, C_out, *spatial)."""
        b = source.shape[0]
        shape = [1, self.out_channels] + list(source.shape[2:])  # noise per position, shared across the batch
        steps = self.timesteps.shape[0]
        stream = level * (steps + 1)
        x = counter_normal(shape, self.seed, stream, source.device, source.dtype).expand([b] + shape[1:])  # (B, C, *S)
        x0 = x
        for i in range(steps):
            t = self.timesteps[i].expand(b)  # (B,)
            a_t = self.alpha_bar_t[i].to(source.dtype)
            a_prev = self.alpha_bar_prev[i].to(source.dtype)
            out = self.denoiser(torch.cat([x, source, prior], dim=1), t, level, 0.0)[0]  # (B, C, *S)
            x0 = convert_prediction(out, x, a_t, self.prediction_type, "sample")
            if self.clip_sample:
                x0 = x0.clamp(-1.0, 1.0)
            eps = convert_prediction(x0, x, a_t, "sample", "epsilon")
            sigma = self.eta * torch.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0.0).sqrt() * eps  # (B, C, *S)
            if self.eta > 0 and i < steps - 1:
                x = x + sigma * counter_normal(shape, self.seed, stream + 1 + i, source.device, source.dtype)
        return x0

    @staticmethod
    def check_training_options(
        mask_ratio: Sequence[float] | float,
        prior_noise_std: float,
        prior_source: str,
        timestep_power: float = 1.0,
        crop_size: Sequence[int] | int | None = None,
    ) -> None:
        """Raise ``ValueError`` for options :meth:`training_outputs` does not take (callers may check them early, as
        the training inferer does at construction; whether ``crop_size`` fits the token stride is checked by
        :meth:`training_outputs`, which knows the network)."""
        if crop_size is not None:
            sizes = crop_size if isinstance(crop_size, Sequence) else [crop_size]
            if len(sizes) == 0 or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in sizes):
                raise ValueError(f"crop_size must be None or positive integers (one or one per axis), got {crop_size}.")
        if not (isinstance(timestep_power, (int, float)) and math.isfinite(timestep_power) and timestep_power > 0):
            raise ValueError(f"timestep_power must be a finite number > 0, got {timestep_power}.")
        if prior_source not in PRIOR_SOURCES:
            raise ValueError(f"prior_source must be 'model' or 'target', got {prior_source!r}.")
        ratios = mask_ratio if isinstance(mask_ratio, Sequence) else [mask_ratio]
        if len(ratios) == 0 or any(not 0.0 <= float(r) < 1.0 for r in ratios):
            raise ValueError(f"mask_ratio must be in [0, 1) (one value or one per level), got {mask_ratio}.")
        if prior_noise_std < 0:
            raise ValueError(f"prior_noise_std must be >= 0, got {prior_noise_std}.")

    def training_outputs(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        mask_ratio: Sequence[float] | float = 0.5,
        prior_noise_std: float = 0.1,
        prior_source: str = "model",
        timestep_power: float = 1.0,
        crop_size: Sequence[int] | int | None = None,
    ) -> List[LevelOutput]:
        """
        One training pass of PHMDiff (arXiv 2507.16579): one noised, masked denoising pass per pyramid level, with
        gradients. It builds the pyramids of source and target and goes from the coarsest level to the finest. At
        every level ℓ it samples a timestep and noise, forms x_t = √ᾱ x₀ + √(1−ᾱ) ε, builds the prior (zeros at the
        coarsest level; else the up-sampled clean estimate of level ℓ+1, plus Gaussian noise of a per-sample std
        drawn from [0, ``prior_noise_std``] — conditioning augmentation as in cascaded diffusion, Ho et al.,
        arXiv 2106.15282) and runs the denoiser on ``concat[x_t, source, prior]`` with mask ratio r.

        The clean estimate of level ℓ+1 is, with ``prior_source="model"``, the network's own x₀ estimate of that
        level in this very pass (detached, clipped to [-1, 1] when ``clip_sample``): an estimate made by the model,
        as sampling gives the finer level, whose quality varies with the coarser level's random t from a regression
        guess to nearly the truth. With ``"target"`` it is the down-sampled ground truth, which the model never gets
        at inference; measured on the demo data, the finest level then learns to copy a prior it is never given and
        the output stays at the coarse level's blur.

        Timesteps, noise and masks come from torch's global RNG (``monai.utils.set_determinism`` makes runs
        repeatable), drawn per level, coarsest first: the prior's std and noise (finer levels only), the timesteps,
        the noise of x_t, then the denoiser's token mask.

        Args:
            source: source images (B, in_channels, *spatial), intensities in about [-1, 1].
            target: target images (B, out_channels, *spatial), intensities in [-1, 1].
            mask_ratio: fraction of tokens dropped before the encoder, one value or one per level (finest first);
                paper: "random, high-proportion masks"; MaskDiT: 0.5. Use 0 for the final unmasking phase.
            prior_noise_std: upper end of the conditioning-augmentation noise std (intensities in [-1, 1]).
            prior_source: "model" or "target": where the finer levels' priors come from (see above).
            timestep_power: k in t = T − 1 − ⌊T·uᵏ⌋, u ~ U[0, 1): 1 draws t uniformly (DDPM); k > 1 draws high-noise
                timesteps more often (k = 2: 32% of draws in the noisiest tenth), where sampling starts and the
                source alone must carry the image.
            crop_size: train the finest level on a random window of this size (pixels, one value or one per
                dimension, multiples of ``denoiser.token_stride(0)``) instead of the whole image, as the
                super-resolution stages of cascaded diffusion models are trained on crops (SR3, arXiv 2104.07636;
                Patch Diffusion, arXiv 2304.12526): the coarser levels, whole, carry the global layout through the
                prior, and the finest level, the costliest, refines locally. One window per batch, aligned to the token
                grid of the whole (padded) image, whose position embedding its tokens get; None (default) or a size
                at least the image's trains on the whole image. Sampling always runs on the whole image. Use it with
                ``hourglass_norm="channel"``: group norm's statistics differ between a window and the whole slice
                (a warning says so). A window may hold up to stride − 1 rows of the replicate padding that the
                denoiser adds at inference too, and the MMD then compares the window's pooled features with the
                whole coarser level's.

        Returns:
            one :class:`LevelOutput` per level, finest first (``outputs[ℓ].level == ℓ``, the order of
            ``mask_ratio`` and of the loss's ``level_weights``), cropped to the level's extent of the input.

        Example::

            >>> outputs = synth.training_outputs(source, target, mask_ratio=0.5)  # finest first
            >>> loss = PHMDiffLoss()(outputs, target)
        """
        self.check_training_options(mask_ratio, prior_noise_std, prior_source, timestep_power, crop_size)
        ratios = ensure_tuple_rep(mask_ratio, self.num_levels)
        stride = self.denoiser.token_stride(0)
        window: Optional[List[int]] = None
        if crop_size is not None:
            window = [int(c) for c in ensure_tuple(crop_size)]
            window = window * self.spatial_dims if len(window) == 1 else window
            if len(window) != self.spatial_dims:
                raise ValueError(f"crop_size must have 1 or {self.spatial_dims} entries, got {crop_size}.")
            if any(c % stride for c in window):
                raise ValueError(
                    f"crop_size must hold multiples of the finest level's token stride {stride}: {crop_size}."
                )
            if self.denoiser.hourglass_norm == "group":
                warnings.warn(
                    "crop_size with hourglass_norm='group': the group norm's statistics differ between a window "
                    "and the whole image, which training on windows does not see; use hourglass_norm='channel'."
                )
        if source.shape[2:] != target.shape[2:] or source.shape[0] != target.shape[0]:
            raise ValueError(
                f"source and target must share batch and spatial size, got {source.shape}, {target.shape}."
            )
        sources = self.pyramid(source)  # L x (B, Cin, *S_l)
        targets = self.pyramid(target)  # L x (B, Cout, *S_l)
        b = source.shape[0]
        alphas = self.alphas_cumprod.to(device=target.device, dtype=target.dtype)
        view = [b] + [1] * (target.ndim - 1)
        outputs: List[LevelOutput] = []  # coarsest first while the pass runs
        estimate = torch.zeros(0)  # the coarser level's clean estimate, set by each level for the next
        for level in range(self.num_levels - 1, -1, -1):
            x0 = targets[level]  # (B, C, *S_l)
            if level < self.num_levels - 1:
                coarser = targets[level + 1] if prior_source == "target" else estimate
                prior = self.upsample(coarser, list(x0.shape[2:]))  # (B, C, *S_l)
                std = torch.rand(view, device=x0.device, dtype=x0.dtype) * prior_noise_std  # (B, 1, ...)
                prior = prior + std * torch.randn_like(prior)
            else:
                prior = torch.zeros_like(x0)
            src = sources[level]
            grid_offset: Optional[List[int]] = None
            if level == 0 and window is not None:
                x0, src, prior, grid_offset = self._random_window([x0, src, prior], window, stride)
            t = self._training_timesteps(b, timestep_power, x0.device)  # (B,)
            noise = torch.randn_like(x0)
            a_t = alphas[t].reshape(view)  # (B, 1, ...)
            x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise  # (B, C, *S_l)
            pred, mask, features = self.denoiser(
                torch.cat([x_t, src, prior], dim=1), t, level, float(ratios[level]), grid_offset
            )
            # the model's own clean estimate, detached: the next level's prior, made as sampling makes it
            estimate = convert_prediction(pred.detach(), x_t, a_t, self.prediction_type, "sample")
            if self.clip_sample:  # as the sampler clips its x0 estimates
                estimate = estimate.clamp(-1.0, 1.0)
            regression_target = convert_prediction(noise, x_t, a_t, "epsilon", self.prediction_type)
            outputs.append(LevelOutput(level, pred, regression_target, mask, features, t))
        return outputs[::-1]

    def _random_window(
        self, images: List[torch.Tensor], window: List[int], stride: int
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[List[int]]]:
        """The same random window of ``images`` (x₀, source, prior), aligned to the token grid of the whole image
        padded as the denoiser pads it, and the window's token-grid offset; the images whole (offset None) when the
        window covers them."""
        padded = [math.ceil(s / stride) * stride for s in images[0].shape[2:]]
        size = [min(w, p) for w, p in zip(window, padded)]
        if size == padded:
            return images[0], images[1], images[2], None
        offset = [int(torch.randint(0, (p - w) // stride + 1, ())) for p, w in zip(padded, size)]
        crops = []
        for image in images:
            image = pad_to_multiple(image, [stride] * self.spatial_dims, self.denoiser.pad_mode)
            for axis in range(self.spatial_dims):
                image = image.narrow(2 + axis, offset[axis] * stride, size[axis])
            crops.append(image)
        return crops[0], crops[1], crops[2], offset

    def _training_timesteps(self, batch: int, power: float, device: torch.device) -> torch.Tensor:
        """Integer timesteps (B,) in [0, T): t = T − 1 − ⌊T·uᵏ⌋; k = 1 keeps ``torch.randint``'s draws."""
        if power == 1.0:
            return torch.randint(0, self.num_train_timesteps, (batch,), device=device)
        u = torch.rand(batch, dtype=torch.float64)  # on the CPU: float64 on any device (MPS has none)
        t = self.num_train_timesteps - 1 - torch.floor(self.num_train_timesteps * u**power).long()
        return t.clamp(0, self.num_train_timesteps - 1).to(device)  # uᵏ may round up to 1 for k < 1

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """
        Args:
            source: source image (B, in_channels, *spatial), intensities scaled to about [-1, 1].

        Returns:
            the synthesised target (B, out_channels, *spatial).
        """
        with torch.no_grad():
            # each level is padded to its patch grid inside the denoiser: no padding of the whole pyramid
            sources = self.pyramid(source)  # L x (B, Cin, *S_l), S_l = ceil(S / 2^l)
            coarsest = sources[self.num_levels - 1]
            b = source.shape[0]
            prior = torch.zeros(
                [b, self.out_channels] + list(coarsest.shape[2:]), dtype=source.dtype, device=source.device
            )
            estimate = prior
            for level in range(self.num_levels - 1, -1, -1):
                src = sources[level]
                if level < self.num_levels - 1:
                    prior = self.upsample(estimate, list(src.shape[2:]))  # (B, C, *S_l)
                    if self.prior_noise_std > 0:
                        prior = prior + self.prior_noise_std * counter_normal(
                            [1, self.out_channels] + list(src.shape[2:]), self.seed, -1 - level, src.device, src.dtype
                        )
                estimate = self._sample_level(src, prior, level)  # (B, C, *S_l)
            return estimate  # (B, C, *spatial)
