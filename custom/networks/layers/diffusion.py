"""Diffusion helpers for PHMDiff: the one conversion between ε, x₀ and v predictions, and counter-based noise.

Both are pure integer/float tensor code, so TorchScript reproduces eager results exactly.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PREDICTION_TYPES", "convert_prediction", "counter_normal"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def convert_prediction(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, source: str, target: str
) -> torch.Tensor:
    """
    Convert a diffusion model output between the parameterisations ε (``"epsilon"``), x₀ (``"sample"``) and
    v = √ᾱ ε − √(1−ᾱ) x₀ (``"v_prediction"``, Salimans & Ho 2022), given x_t = √ᾱ x₀ + √(1−ᾱ) ε.
    This is the only place in the package where the three are related.

    Args:
        output: the quantity in the ``source`` parameterisation, shape (B, C, *spatial).
        x_t: the noisy sample, same shape.
        alpha_bar: ᾱ_t, broadcastable to ``output`` (e.g. (B, 1, 1[, 1]) or a scalar tensor).
        source: one of ``PREDICTION_TYPES``.
        target: one of ``PREDICTION_TYPES``.

    Example::

        >>> x0 = convert_prediction(eps_hat, x_t, alpha_bar, "epsilon", "sample")
    """
    if source == target:
        return output
    a = alpha_bar.sqrt()
    s = (1.0 - alpha_bar).sqrt()
    # x0 and eps from the source parameterisation
    if source == "epsilon":
        eps = output
        x0 = (x_t - s * eps) / a
    elif source == "sample":
        x0 = output
        eps = (x_t - a * x0) / s
    elif source == "v_prediction":
        x0 = a * x_t - s * output
        eps = s * x_t + a * output
    else:
        raise ValueError("source must be 'epsilon', 'sample' or 'v_prediction', got " + source)
    if target == "epsilon":
        return eps
    if target == "sample":
        return x0
    if target == "v_prediction":
        return a * eps - s * x0
    raise ValueError("target must be 'epsilon', 'sample' or 'v_prediction', got " + target)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' 'lowbias32' integer hash on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF  # int64 products wrap, the low 32 bits stay exact
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x = x ^ (x >> 16)
    return x


def counter_normal(
    shape: list[int], seed: int, stream: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """
    Standard normal noise that is a pure function of ``(seed, stream, element index)``: a counter-based generator
    (integer hash + Box-Muller) that never touches torch's global RNG, gives the same numbers on every call, and is
    reproduced bit for bit by TorchScript.

    Args:
        shape: output shape.
        seed: any integer; only its low 32 bits are used.
        stream: an integer naming the independent stream (e.g. pyramid level and sampling step).
        device: output device.
        dtype: output dtype (the noise is computed in float32 and then cast).

    Example::

        >>> counter_normal([2, 3], seed=0, stream=1, device=torch.device("cpu")).shape
        torch.Size([2, 3])
    """
    n = 1
    for s in shape:
        n *= s
    key = _hash32(torch.tensor([seed & 0xFFFFFFFF], dtype=torch.int64, device=device))
    key = _hash32(key ^ _hash32(torch.tensor([stream & 0xFFFFFFFF], dtype=torch.int64, device=device)))
    counter = torch.arange(2 * n, dtype=torch.int64, device=device)
    bits = _hash32((_hash32(counter & 0xFFFFFFFF) + key) & 0xFFFFFFFF) >> 8  # 24 random bits
    u = (bits.to(torch.float32) + 0.5) * (1.0 / 16777216.0)  # uniform in (0, 1)
    u1, u2 = u[:n], u[n:]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.reshape(shape).to(dtype)
