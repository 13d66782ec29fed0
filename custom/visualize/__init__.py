from __future__ import annotations

from .figures import plot_training_curves, save_synthesis_grid
