from __future__ import annotations

from .diffusion import PREDICTION_TYPES, convert_prediction, counter_normal
from .normalization import ChannelLayerNorm
from .pyramid import (
    ImagePyramid,
    PyramidDownsample,
    PyramidUpsample,
    crop_to_size,
    pad_to_multiple,
    depth_to_space,
    space_to_depth,
)

__all__ = [
    "PREDICTION_TYPES",
    "convert_prediction",
    "counter_normal",
    "ChannelLayerNorm",
    "ImagePyramid",
    "PyramidDownsample",
    "PyramidUpsample",
    "crop_to_size",
    "pad_to_multiple",
    "depth_to_space",
    "space_to_depth",
]
