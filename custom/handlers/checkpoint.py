"""Checkpoints that resume training exactly: the engine's progress and the random number generators saved too."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Compose, Randomizable

__all__ = ["latest_checkpoint", "RandomStates", "EngineCheckpointSaver", "EngineCheckpointLoader"]


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


class RandomStates:
    """The states of Python's, NumPy's and PyTorch's global generators and of the random transforms, as a
    checkpointable object (``state_dict`` / ``load_state_dict``) holding tensors and plain types only, so it loads
    with ``torch.load(..., weights_only=True)``.

    Args:
        transforms: random transforms whose own generators are saved too (a ``Compose`` is searched).
    """

    def __init__(self, transforms: Sequence | Compose | None = None) -> None:
        found = transforms.flatten().transforms if isinstance(transforms, Compose) else (transforms or [])
        self.randomizables = [t for t in found if isinstance(t, Randomizable)]

    @staticmethod
    def _numpy_state(state: tuple) -> dict:
        name, keys, pos, has_gauss, cached = state
        return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached}

    @staticmethod
    def _numpy_tuple(state: dict) -> tuple:
        keys = state["keys"].numpy().astype(np.uint32)
        return ("MT19937", keys, state["pos"], state["has_gauss"], state["cached"])

    def state_dict(self) -> dict:
        version, internal, gauss = random.getstate()
        return {
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "numpy": self._numpy_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "transforms": [self._numpy_state(t.R.get_state()) for t in self.randomizables],
        }

    def load_state_dict(self, state: dict) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        np.random.set_state(self._numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if len(state["transforms"]) != len(self.randomizables):
            raise ValueError(
                f"checkpoint holds the states of {len(state['transforms'])} random transforms, the pipeline has "
                f"{len(self.randomizables)}: it was written with another preprocessing."
            )
        for transform, saved in zip(self.randomizables, state["transforms"]):
            transform.R.set_state(self._numpy_tuple(saved))


class EngineCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that also saves the engine it is attached to (epoch and iteration), as
    ``engine_key``; the engine cannot be named in the config's ``save_dict`` without a circular reference.

    Args:
        engine_key: key of the engine in the checkpoint.
        args, kwargs: as ``CheckpointSaver``.
    """

    def __init__(self, *args, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        self.save_dict[self.engine_key] = engine  # the savers hold this same dict
        super().attach(engine)


class EngineCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that also restores the engine it is attached to from ``engine_key``.

    Args:
        engine_key: key of the engine in the checkpoint.
        args, kwargs: as ``CheckpointLoader``.
    """

    def __init__(self, *args, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        self.load_dict[self.engine_key] = engine
        super().attach(engine)
