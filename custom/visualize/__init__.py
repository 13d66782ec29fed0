from __future__ import annotations

from .figures import plot_training_curves, save_orthogonal_planes, save_synthesis_grid

__all__ = ["plot_training_curves", "save_orthogonal_planes", "save_synthesis_grid"]
