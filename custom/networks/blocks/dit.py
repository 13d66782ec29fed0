"""Diffusion-transformer blocks for PHMDiff (arXiv 2507.16579), after DiT (Peebles & Xie, arXiv 2212.09748).

Sections: helpers, embedders, blocks, position embeddings. Everything is TorchScript-compatible and works for
``spatial_dims`` 2 and 3.
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import MLPBlock, SABlock
from torch import nn

__all__ = ["modulate", "TimestepEmbedder", "DiTBlock", "FinalLayer", "sincos_position_embedding"]


#################################################################################
#                                   Helpers                                     #
#################################################################################


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens ``x`` (B, N, D) by per-sample ``shift`` and ``scale`` (B, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


#################################################################################
#                                  Embedders                                    #
#################################################################################


class TimestepEmbedder(nn.Module):
    """
    Embeds scalar diffusion timesteps into vectors: sinusoidal frequencies followed by a two-layer MLP (DiT).

    Args:
        hidden_size: output dimension.
        frequency_embedding_size: number of sinusoidal features (even).

    Example::

        >>> TimestepEmbedder(96)(torch.tensor([0, 500])).shape
        torch.Size([2, 96])
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        if frequency_embedding_size < 2 or frequency_embedding_size % 2:
            raise ValueError(f"frequency_embedding_size must be even and >= 2, got {frequency_embedding_size}.")
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (B, F/2)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, F)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # (B, D)


#################################################################################
#                                    Blocks                                     #
#################################################################################


class DiTBlock(nn.Module):
    """
    A transformer block with adaptive layer norm zero (adaLN-Zero) conditioning (DiT, arXiv 2212.09748), built from
    MONAI's :class:`~monai.networks.blocks.SABlock` and :class:`~monai.networks.blocks.MLPBlock`. The adaLN layer
    returns shift/scale/gate for attention and MLP; zero-initialised, it makes the block the identity.

    Args:
        hidden_size: token dimension D.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP hidden dimension as a multiple of ``hidden_size``.
        qkv_bias: bias on the query/key/value projection.
        dropout_rate: dropout in attention and MLP.

    Example::

        >>> block = DiTBlock(96, 4)
        >>> block(torch.rand(2, 10, 96), torch.rand(2, 96)).shape
        torch.Size([2, 10, 96])
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SABlock(
            hidden_size, num_heads, dropout_rate=dropout_rate, qkv_bias=qkv_bias, use_flash_attention=True
        )
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = MLPBlock(hidden_size, int(hidden_size * mlp_ratio), dropout_rate=dropout_rate, act="GELU")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            mods[0],
            mods[1],
            mods[2],
            mods[3],
            mods[4],
            mods[5],
        )
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, N, D)
        return x


class FinalLayer(nn.Module):
    """
    The DiT output layer: adaLN-modulated layer norm and a linear map of each token to ``out_dim`` values (the
    pixels of one patch). Zero-initialised by the owning network, so its output starts at exactly zero.

    Args:
        hidden_size: token dimension D.
        out_dim: values per token, ``prod(patch) * out_channels``.
    """

    def __init__(self, hidden_size: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        x = modulate(self.norm_final(x), mods[0], mods[1])  # (B, N, D)
        return self.linear(x)  # (B, N, out_dim)


#################################################################################
#                              Position embeddings                              #
#################################################################################


def sincos_position_embedding(
    grid_size: list[int],
    embed_dim: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
    offset: list[int] | None = None,
) -> torch.Tensor:
    """
    Fixed sin-cos position embedding of a 2-D or 3-D token grid, laid out exactly as MONAI's
    :func:`~monai.networks.blocks.pos_embed_utils.build_sincos_position_embedding` (sin/cos of the 2nd axis, then of
    the 1st, then of the 3rd; tokens in row-major grid order), but TorchScript-compatible and computed for any grid
    on any device.

    Args:
        grid_size: tokens per spatial dimension (2 or 3 values).
        embed_dim: embedding dimension, divisible by ``2 * len(grid_size)``.
        device: output device.
        dtype: output dtype.
        temperature: frequency base.
        offset: grid coordinates of the first token per dimension (default 0): the embedding of a window of a
            larger grid, equal to those rows of the larger grid's embedding.

    Returns:
        tensor of shape (1, prod(grid_size), embed_dim).
    """
    nd = len(grid_size)
    if embed_dim % (2 * nd) != 0:
        raise ValueError(f"embed_dim must be divisible by {2 * nd} for a {nd}-D sin-cos embedding, got {embed_dim}.")
    pos_dim = embed_dim // (2 * nd)
    omega = torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim
    omega = 1.0 / (temperature**omega)  # (P,)
    start = [0] * nd if offset is None else offset
    axes = [torch.arange(start[i], start[i] + grid_size[i], dtype=torch.float32, device=device) for i in range(nd)]
    coords = torch.meshgrid(axes, indexing="ij")
    order = [1, 0] if nd == 2 else [1, 0, 2]  # MONAI's (w, h[, d]) order
    parts: list[torch.Tensor] = []
    for axis in order:
        out = coords[axis].reshape(-1)[:, None] * omega[None]  # (N, P)
        parts.append(torch.sin(out))
        parts.append(torch.cos(out))
    return torch.cat(parts, dim=1)[None].to(dtype)  # (1, N, D)
