from __future__ import annotations

from .phmdiff_inferer import PHMDiffTrainingInferer
from .slice import AcquisitionPlaneSliceInferer

__all__ = ["AcquisitionPlaneSliceInferer", "PHMDiffTrainingInferer"]
