"""Finding the checkpoint to resume training from."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["latest_checkpoint"]


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "latest") -> str:
    """Path of the newest ``{prefix}_checkpoint_*.pt`` written by MONAI's ``CheckpointSaver`` in ``ckpt_dir``,
    or ``""`` when there is none (a fresh run).

    Args:
        ckpt_dir: folder of the checkpoints.
        prefix: the saver's ``file_prefix``.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(?:epoch=)?(\d+)\.pt$")
    folder = Path(ckpt_dir)
    found = [(int(m.group(1)), p) for p in folder.glob(f"{prefix}_*.pt") if (m := pattern.match(p.name))]
    return str(max(found)[1]) if found else ""
