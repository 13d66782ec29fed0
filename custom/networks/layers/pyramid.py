"""Image pyramids for PHMDiff: antialiased down-sampling by 0.5, up-sampling, padding to a multiple and cropping back.

PHMDiff (Pyramid Hierarchical Masked Diffusion, arXiv 2507.16579) decomposes the source and the target image into
progressively lower resolutions with scale factor 0.5. Every operation here works for ``spatial_dims`` 2 and 3 and is
TorchScript-compatible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "pad_to_multiple",
    "crop_to_size",
    "space_to_depth",
    "depth_to_space",
    "PyramidDownsample",
    "PyramidUpsample",
    "ImagePyramid",
]

# binomial filter [1, 3, 3, 1] / 8: a stride-2 blur whose taps are centred on the half-resolution grid
_BINOMIAL_4 = (0.125, 0.375, 0.375, 0.125)


def pad_to_multiple(x: torch.Tensor, multiple: list[int], mode: str = "replicate") -> torch.Tensor:
    """
    Pad the spatial dimensions of ``x`` (B, C, *spatial) at their ends up to the next multiple of ``multiple``.

    Args:
        x: input of shape (B, C, *spatial).
        multiple: one positive integer per spatial dimension.
        mode: padding mode of ``torch.nn.functional.pad`` ("replicate", "reflect" or "constant").

    Returns:
        the padded tensor; :func:`crop_to_size` with the original spatial size undoes it.
    """
    spatial = list(x.shape[2:])
    pad: list[int] = []
    # F.pad lists the pads from the last dimension backwards
    for i in range(len(spatial) - 1, -1, -1):
        m = multiple[i]
        extra = (m - spatial[i] % m) % m
        pad.append(0)
        pad.append(extra)
    if sum(pad) == 0:
        return x
    if mode == "constant":
        return F.pad(x, pad, mode="constant", value=0.0)
    return F.pad(x, pad, mode=mode)


def crop_to_size(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Crop the spatial dimensions of ``x`` (B, C, *spatial) to their first ``size`` elements."""
    for i in range(len(size)):
        x = x.narrow(2 + i, 0, size[i])
    return x


def space_to_depth(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel unshuffle: fold each ``factor``-sided block of voxels of ``x`` (B, C, *spatial; sizes multiples of
    ``factor``) into channels, (B, C * factor**d, *spatial / factor). In the channel order of torch's 2-D
    ``F.pixel_unshuffle`` and MONAI's N-D ``monai.networks.utils.pixelunshuffle``, which TorchScript cannot compile."""
    b, c = x.shape[0], x.shape[1]
    spatial = list(x.shape[2:])
    for s in spatial:
        if s % factor != 0:
            raise ValueError(
                "space_to_depth: spatial sizes " + str(spatial) + " must be multiples of factor " + str(factor)
            )
    nd = len(spatial)
    split = [b, c]
    for s in spatial:
        split += [s // factor, factor]
    perm = [0, 1] + [3 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
    return x.reshape(split).permute(perm).reshape([b, -1] + [s // factor for s in spatial])


def depth_to_space(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel shuffle, the inverse of :func:`space_to_depth`: (B, C * factor**d, *grid) to (B, C, *grid * factor)."""
    b = x.shape[0]
    grid = list(x.shape[2:])
    nd = len(grid)
    volume = int(factor**nd)  # TorchScript's int ** int is a float
    if x.shape[1] % volume != 0:
        raise ValueError(
            "depth_to_space: channels " + str(x.shape[1]) + " must be a multiple of factor**dims " + str(volume)
        )
    c = x.shape[1] // volume
    perm = [0, 1]
    for i in range(nd):
        perm += [2 + nd + i, 2 + i]
    x = x.reshape([b, c] + [factor] * nd + grid).permute(perm)
    return x.reshape([b, c] + [g * factor for g in grid])


class PyramidDownsample(nn.Module):
    """
    Antialiased down-sampling by 0.5: a separable binomial [1, 3, 3, 1]/8 blur with stride 2 (Zhang, "Making
    Convolutional Networks Shift-Invariant Again", ICML 2019), applied channel-wise with replicate padding. An input
    of size n gives ceil(n / 2); odd sizes are replicate-padded by one first.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.

    Example::

        >>> PyramidDownsample(2)(torch.rand(1, 1, 99, 117)).shape
        torch.Size([1, 1, 50, 59])
        >>> PyramidDownsample(3)(torch.rand(1, 1, 48, 40, 32)).shape
        torch.Size([1, 1, 24, 20, 16])
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        k1 = torch.tensor(_BINOMIAL_4, dtype=torch.float32)
        kernel = k1
        for _ in range(spatial_dims - 1):
            kernel = kernel[..., None] * k1
        self.register_buffer("kernel", kernel[None, None], persistent=False)  # (1, 1, 4, 4[, 4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        spatial = list(x.shape[2:])
        y = x.reshape([b * c, 1] + spatial)  # (B*C, 1, *S)
        y = pad_to_multiple(y, [2] * self.spatial_dims)  # even sizes
        y = F.pad(y, [1] * (2 * self.spatial_dims), mode="replicate")  # (B*C, 1, *S + 2)
        w = self.kernel.to(y.dtype)
        if self.spatial_dims == 2:
            y = F.conv2d(y, w, stride=2)
        else:
            y = F.conv3d(y, w, stride=2)
        return y.reshape([b, c] + list(y.shape[2:]))  # (B, C, *ceil(S / 2))


class PyramidUpsample(nn.Module):
    """
    Up-sampling to a given spatial size by (bi/tri)linear interpolation (``align_corners=False``, the inverse grid
    convention of :class:`PyramidDownsample`).

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.

    Example::

        >>> PyramidUpsample(2)(torch.rand(1, 1, 50, 59), [99, 117]).shape
        torch.Size([1, 1, 99, 117])
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)


class ImagePyramid(nn.Module):
    """
    The PHMDiff image pyramid (arXiv 2507.16579): ``num_levels`` images, level 0 the input, each further level
    down-sampled by 0.5 with :class:`PyramidDownsample`.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        num_levels: number of levels L >= 1.

    Example::

        >>> [p.shape[2:] for p in ImagePyramid(2, 3)(torch.rand(2, 1, 96, 80))]
        [torch.Size([96, 80]), torch.Size([48, 40]), torch.Size([24, 20])]
    """

    def __init__(self, spatial_dims: int, num_levels: int = 3) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}.")
        self.num_levels = num_levels
        self.down = PyramidDownsample(spatial_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [x]  # finest first
        for _ in range(self.num_levels - 1):
            x = self.down(x)  # (B, C, *S / 2)
            levels.append(x)
        return levels
