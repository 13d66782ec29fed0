"""Checkpoints that resume training exactly: the engine's progress and the random number generators saved too."""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.networks.utils import copy_model_state
from monai.transforms import Compose, Randomizable

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "latest_checkpoint",
    "RandomStates",
    "AtomicCheckpointSaver",
    "CheckedCheckpointLoader",
    "EngineCheckpointSaver",
    "EngineCheckpointLoader",
]

TEMP_PREFIX = ".checkpoint-partial-"  # temporary files of the atomic saver, removed on failure


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
        raise CheckpointError(f"checkpoint '{path}' is corrupt, truncated or not a PyTorch checkpoint ({reason}).") from None


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


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing to a temporary file in the same folder, flushed to disk, then renamed onto the
    checkpoint name; a process killed while saving leaves the previous checkpoint and at most a temporary file,
    which the next run removes. Supports the fixed file names of MONAI's saver (``filename``)."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        for stale in Path(dirname).glob(f"{TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)  # left by a killed run; never a complete checkpoint

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is replaced in place, never removed
            super().remove(filename)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        with tempfile.NamedTemporaryFile(delete=False, dir=self.dirname, prefix=TEMP_PREFIX) as tmp:
            try:
                func(checkpoint, tmp.file, **self.kwargs)
                tmp.file.flush()
                os.fsync(tmp.file.fileno())
            except BaseException:
                tmp.close()
                os.remove(tmp.name)
                raise
        os.replace(tmp.name, path)
        os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written atomically (temporary file, ``fsync``, rename), so a
    checkpoint is never half-written (MONAI's saver writes in place, ``atomic=False``).

    Args:
        args, kwargs: as ``CheckpointSaver``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)

    def state_dict(self) -> dict:
        """The best score and file of the key-metric saver: kept in the training checkpoint, so that a resumed run
        does not replace a better ``model.pt`` with its first validation."""
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self._key_metric_checkpoint is not None and state:
            self._key_metric_checkpoint.load_state_dict(state)


class EngineCheckpointSaver(AtomicCheckpointSaver):
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
        engine.add_event_handler(Events.STARTED, self._adopt_earlier_checkpoints)

    def _adopt_earlier_checkpoints(self, engine: Engine) -> None:
        """After a resume, count the interval checkpoints already on disk up to the resumed epoch as this saver's
        own, so ``n_saved`` keeps applying (a new process would otherwise never remove them)."""
        checkpoint = self._interval_checkpoint
        if checkpoint is None or checkpoint.save_handler.filename is not None:
            return
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        pattern = re.compile(rf"^{re.escape(checkpoint.filename_prefix)}_checkpoint_{checkpoint.score_name}=(\d+)\.pt$")
        found = sorted(
            (int(m.group(1)), p.name)
            for p in Path(self.save_dir).glob("*.pt")
            if (m := pattern.match(p.name)) and int(m.group(1)) <= step
        )
        known = {item.filename for item in checkpoint._saved}
        checkpoint._saved.extend(Checkpoint.Item(priority, name) for priority, name in found if name not in known)
        checkpoint._saved.sort(key=lambda item: item.priority)


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` with one clear :class:`CheckpointError` naming the path and saying whether the
    file is missing, corrupt, unsafe (not loadable with ``weights_only=True``) or incompatible with the objects to
    load, instead of a deep traceback.

    Args:
        args, kwargs: as ``CheckpointLoader``.
    """

    def __call__(self, engine: Engine) -> None:
        checkpoint = load_checkpoint(self.load_path, map_location=self.map_location)  # missing, corrupt or unsafe
        try:
            self._restore(engine, checkpoint)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
            reason = " ".join(str(err).split())
            reason = reason if len(reason) <= 400 else reason[:400] + " ..."
            raise CheckpointError(
                f"checkpoint '{self.load_path}' is incompatible with {sorted(self.load_dict)} of this config "
                f"(another network size, preset or pipeline?): {reason}"
            ) from err
        self.logger.info(f"Restored all variables from {self.load_path}")

    def _restore(self, engine: Engine, checkpoint: dict) -> None:
        """MONAI's ``CheckpointLoader.__call__`` after its ``torch.load``."""
        if not isinstance(checkpoint, dict):
            raise TypeError(f"the file holds a {type(checkpoint).__name__}, not a dict of state dicts")
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and first not in checkpoint:  # a bare state_dict for a single object
            checkpoint = {first: checkpoint}
        if not self.strict_shape:
            for key, obj in list(self.load_dict.items()):
                if isinstance(obj, torch.nn.Module):
                    checkpoint[key] = copy_model_state(obj, checkpoint, inplace=False)[0]
                else:
                    self.load_dict.pop(key)
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"it was saved at epoch {engine.state.epoch}, beyond max_epochs={prior_max_epochs}; raise "
                "train#trainer#max_epochs to train further"
            )
        engine.state.max_epochs = prior_max_epochs


class EngineCheckpointLoader(CheckedCheckpointLoader):
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
