from __future__ import annotations

from .prepare_batch import PHMDiffPrepareBatch
