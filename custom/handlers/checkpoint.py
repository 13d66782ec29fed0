"""Checkpoint handlers that resume training exactly: the engine's progress and the random number generators saved
too, files written atomically, and one clear error for a checkpoint that cannot be used."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import ignite.distributed as idist
import monai
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.networks.utils import copy_model_state

from ..utils.checkpoint import CheckpointError, load_checkpoint

__all__ = ["AtomicCheckpointSaver", "CheckedCheckpointLoader", "EngineCheckpointSaver", "EngineCheckpointLoader"]

TEMP_PREFIX = ".checkpoint-partial-"  # temporary files of the atomic saver, removed on failure


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing to a temporary file in the same folder, flushed to disk, then renamed onto the
    checkpoint name; a process killed while saving leaves the previous checkpoint and at most a temporary file,
    which the next run removes. Supports the fixed file names of MONAI's saver (``filename``).

    ``__call__`` writes the file itself, from ``DiskSaver``'s public attributes (``dirname``, ``save_on_rank``,
    ``kwargs``), rather than overriding its private ``_save_func``; Ignite's XLA (TPU) branch is not supported.
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        for stale in Path(dirname).glob(f"{TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)  # left by a killed run; never a complete checkpoint

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / (self.filename or filename)
        with tempfile.NamedTemporaryFile(delete=False, dir=self.dirname, prefix=TEMP_PREFIX) as tmp:
            try:
                torch.save(checkpoint, tmp.file, **self.kwargs)
                tmp.file.flush()
                os.fsync(tmp.file.fileno())
            except BaseException:
                tmp.close()
                os.remove(tmp.name)
                raise
        os.replace(tmp.name, path)
        os.chmod(path, 0o666 & ~_umask())

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is replaced in place, never removed
            super().remove(filename)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# MONAI's CheckpointSaver keeps its Ignite Checkpoint objects in private attributes, with no public accessor
# (MONAI 1.x): final, key-metric and interval checkpoints, in this order.
_MONAI_SAVER_CHECKPOINTS = ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint")


def _monai_saver_checkpoints(saver: CheckpointSaver) -> tuple[Checkpoint | None, Checkpoint | None, Checkpoint | None]:
    """The Ignite ``Checkpoint`` objects of MONAI's ``CheckpointSaver``: ``(final, key_metric, interval)``, ``None``
    where the saver does not save that kind.

    The only place this package reads MONAI's private attributes (see ``_MONAI_SAVER_CHECKPOINTS``); each
    checkpoint's ``save_handler`` must have MONAI's fixed ``filename`` (``None`` for numbered files). A MONAI that
    renames or changes them raises ``AttributeError`` here, naming what changed (``tests/test_handlers.py`` checks
    the installed MONAI), instead of checkpoints being written non-atomically or under another name.
    """
    found = []
    for name in _MONAI_SAVER_CHECKPOINTS:
        value = getattr(saver, name, AttributeError)
        if value is not None and not (isinstance(value, Checkpoint) and hasattr(value.save_handler, "filename")):
            raise AttributeError(
                f"monai.handlers.CheckpointSaver.{name} is no longer an Ignite Checkpoint whose save_handler has a "
                f"'filename' (MONAI {monai.__version__}); custom.handlers.checkpoint._monai_saver_checkpoints must be "
                "updated for this MONAI version."
            )
        found.append(value)
    return found[0], found[1], found[2]


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files are written atomically (temporary file, ``fsync``, rename), so a
    checkpoint is never half-written (MONAI's saver writes in place, ``atomic=False``).

    ``final_checkpoint``, ``key_metric_checkpoint`` and ``interval_checkpoint`` are MONAI's Ignite ``Checkpoint``
    objects (``None`` where not configured), from :func:`_monai_saver_checkpoints`.

    Args:
        args, kwargs: as ``CheckpointSaver``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.final_checkpoint, self.key_metric_checkpoint, self.interval_checkpoint = _monai_saver_checkpoints(self)
        for checkpoint in (self.final_checkpoint, self.key_metric_checkpoint, self.interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)

    def state_dict(self) -> dict:
        """The best score and file of the key-metric saver: kept in the training checkpoint, so that a resumed run
        does not replace a better ``model.pt`` with its first validation."""
        return self.key_metric_checkpoint.state_dict() if self.key_metric_checkpoint is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.key_metric_checkpoint is not None and state:
            self.key_metric_checkpoint.load_state_dict(state)


_SAVED = "_saved"  # the key of Ignite's Checkpoint.state_dict(): a list of (priority, filename), lowest first


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
        checkpoint = self.interval_checkpoint
        if checkpoint is None or checkpoint.save_handler.filename is not None:
            return
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        pattern = re.compile(rf"^{re.escape(checkpoint.filename_prefix)}_checkpoint_{checkpoint.score_name}=(\d+)\.pt$")
        found = sorted(
            (int(m.group(1)), p.name)
            for p in Path(self.save_dir).glob("*.pt")
            if (m := pattern.match(p.name)) and int(m.group(1)) <= step
        )
        state = checkpoint.state_dict()  # Ignite's public way to read and restore the list of saved files
        known = {filename for _, filename in state[_SAVED]}
        saved = [*state[_SAVED], *((priority, name) for priority, name in found if name not in known)]
        checkpoint.load_state_dict({**state, _SAVED: sorted(saved, key=lambda item: item[0])})


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
