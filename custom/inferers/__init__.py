from __future__ import annotations

from .phmdiff_inferer import PHMDiffTrainingInferer
