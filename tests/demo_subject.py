"""One simulated demo test subject for tests that need a real-like brain volume, generated once per session.

A plain clone has no ``bundle/data`` (the README's first command generates it), so tests must not read it. Subject
``k`` of a split depends only on ``(seed, split, k)``: this is the bundle's own demo test subject 0.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from custom.data import generate_demo_dataset


@functools.lru_cache(maxsize=1)
def demo_test_subject() -> Path:
    """Folder with ``t1w.nii.gz``, ``t2w.nii.gz``, ``brain_mask.nii.gz`` and ``lesion.nii.gz`` (2 mm, RAS)."""
    root = Path(tempfile.mkdtemp(prefix="phmdiff_demo_subject_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    generate_demo_dataset(root / "data", num_training=1, num_validation=1, num_test=1)
    return root / "data" / "test" / "subject_000"
