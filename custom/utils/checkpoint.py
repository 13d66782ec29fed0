"""Checkpoint files and checkpointable state that are not Ignite handlers: loading a checkpoint with one clear
error, finding the latest one, and the random generators' states (the handlers are in :mod:`custom.handlers`)."""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, Randomizable

__all__ = ["CheckpointError", "load_checkpoint", "latest_checkpoint", "RandomStates"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe or incompatible; the message names the path."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with one clear :class:`CheckpointError` naming the path and the
    reason (missing, truncated or not a checkpoint, or holding Python objects that tensors-only loading refuses).

    Args:
        path: the checkpoint file.
        map_location: as ``torch.load``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"\bGLOBAL (\S+)", str(err))  # torch words it "Unsupported global: GLOBAL io.open ..."
        if found:  # or "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"
            raise CheckpointError(
                f"checkpoint '{path}' was refused as unsafe: it holds a pickled Python object ({found.group(1)}) "
                "besides tensors and plain types, which could run code when loaded; only tensors-only checkpoints "
                "(weights_only=True) are accepted. Re-save a plain state_dict from a trusted copy."
            ) from None
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if not line.startswith("Check the documentation")), "")
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a PyTorch checkpoint ({reason}).") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt, truncated or not a PyTorch checkpoint ({reason})."
        ) from None


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

    Every generator reachable from the transforms is saved, nested ones included: e.g. ``RandAffined`` draws its
    angles from the generator of its inner ``RandAffineGrid``, not from its own ``R``; MONAI's ``DataLoader`` seeds
    each of them separately (``set_rnd``).

    Args:
        transforms: random transforms whose own generators are saved too (a ``Compose`` is searched).
    """

    def __init__(self, transforms: Sequence | Compose | None = None) -> None:
        found = transforms.flatten().transforms if isinstance(transforms, Compose) else (transforms or [])
        self.randomizables = [t for t in found if isinstance(t, Randomizable)]
        self.generators = self._generators(self.randomizables)

    @staticmethod
    def _generators(objects: Sequence) -> list[np.random.RandomState]:
        """The distinct ``R`` generators of ``objects`` and of the transforms they hold, in a fixed order."""
        found: dict[int, np.random.RandomState] = {}
        seen: set[int] = set()

        def visit(obj) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if isinstance(obj, (list, tuple)):
                for item in obj:
                    visit(item)
            elif isinstance(obj, dict):
                for item in obj.values():
                    visit(item)
            elif isinstance(obj, (Randomizable, Compose)) or type(obj).__module__.startswith("monai.transforms"):
                if isinstance(getattr(obj, "R", None), np.random.RandomState):
                    found.setdefault(id(obj.R), obj.R)
                for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
                    visit(value)

        for obj in objects:
            visit(obj)
        return list(found.values())

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
            "transforms": [self._numpy_state(generator.get_state()) for generator in self.generators],
        }

    def load_state_dict(self, state: dict) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
        np.random.set_state(self._numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if len(state["transforms"]) != len(self.generators):
            raise ValueError(
                f"checkpoint holds the states of {len(state['transforms'])} transform generators, the pipeline has "
                f"{len(self.generators)}: it was written with another preprocessing."
            )
        for generator, saved in zip(self.generators, state["transforms"]):
            generator.set_state(self._numpy_tuple(saved))
