from __future__ import annotations

from .dit import DiTBlock, FinalLayer, TimestepEmbedder, modulate, sincos_position_embedding
from .masking import num_kept_tokens, random_masking, restore_tokens
