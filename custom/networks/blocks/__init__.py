from __future__ import annotations

from .dit import DiTBlock, FinalLayer, TimestepEmbedder, modulate, sincos_position_embedding
from .masking import num_kept_tokens, random_masking, restore_tokens

__all__ = [
    "DiTBlock",
    "FinalLayer",
    "TimestepEmbedder",
    "modulate",
    "sincos_position_embedding",
    "num_kept_tokens",
    "random_masking",
    "restore_tokens",
]
