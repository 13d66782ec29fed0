from __future__ import annotations

from .evaluator import SynthesisError, SynthesisEvaluator, sigterm_interrupts
from .prepare_batch import PHMDiffPrepareBatch

__all__ = ["PHMDiffPrepareBatch", "SynthesisError", "SynthesisEvaluator", "sigterm_interrupts"]
