"""MONAI's evaluator for synthesis over many files: a report row per input, skip and go on, a summary at the end."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from monai.engines import SupervisedEvaluator
from monai.utils import CommonKeys, ImageMetaKey

from ..data.dataset import ERROR_KEY, INELIGIBLE_KEY
from ..utils.errors import describe_error
from ..transforms.io import OutputWriteError, SafeSaveImaged, remove_stale_partials, write_file_atomic

__all__ = ["SynthesisError", "SynthesisEvaluator", "sigterm_interrupts", "WRITTEN", "SKIPPED", "FAILED"]

WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"  # a report row's status, NIfTI and DICOM runs alike
logger = logging.getLogger(__name__)


class SynthesisError(RuntimeError):
    """Inputs of a synthesis run failed; the message is the run's summary, ``report.json`` gives the reasons."""


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM (``kill``, a job scheduler) stops the code inside as Ctrl-C does, with ``KeyboardInterrupt``, so that
    its clean-up and report still happen. Only the main thread receives signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class SynthesisEvaluator(SupervisedEvaluator):
    """MONAI's :class:`~monai.engines.SupervisedEvaluator` for synthesis over many files, run as the DICOM batch
    (:class:`custom.io.DicomBatchSynthesis`) is: every input gets a row in ``output_dir/report.json`` (written
    atomically, also when the run is interrupted) with its status (written / skipped / failed), the reason, the
    output file and the seconds spent.

    - An input whose output exists is skipped before synthesis, unless the saver overwrites; an input whose output
      would be that of an earlier input of the run fails.
    - An input that fails (unusable image, failed write; with a :class:`custom.data.TolerantDataset` also one that
      cannot be loaded) is reported and the others still run; one the model is not meant for (with a
      ``TolerantDataset``: :class:`~custom.transforms.IneligibleImageError`, e.g. a CT given as MR, a head with
      skull) is skipped with the reason, as the DICOM batch skips ineligible series.
    - First ``output_dir`` is created (one clear error when it cannot be) and the temporary files that killed runs
      left there are removed; SIGTERM stops the run as Ctrl-C does.
    - Last a one-line summary is logged and, when any input failed or none was eligible (nothing to synthesise),
      raised as :class:`SynthesisError`.

    Args:
        output_dir: the saver's output folder, where ``report.json`` goes.
        postprocessing: as ``SupervisedEvaluator``; it must hold one :class:`custom.transforms.SafeSaveImaged`.
        image_key: the input's key in the batch.
        args, kwargs: as ``SupervisedEvaluator``; the data loader gives one input per batch.
    """

    def __init__(
        self, *args, output_dir: str | os.PathLike, postprocessing, image_key: str = CommonKeys.IMAGE, **kwargs
    ) -> None:
        super().__init__(*args, postprocessing=postprocessing, **kwargs)
        savers = [t.saver for t in getattr(postprocessing, "transforms", ()) if isinstance(t, SafeSaveImaged)]
        if len(savers) != 1:
            raise ValueError(f"postprocessing must hold one custom.transforms.SafeSaveImaged, found {len(savers)}.")
        if getattr(self.data_loader, "batch_size", 1) != 1:
            raise ValueError("val_data_loader must give one input per batch (batch_size=1).")
        self.saver, self.output_dir, self.image_key = savers[0], Path(output_dir), image_key
        self.records: list[dict] = []
        self._ineligible = 0  # inputs of this run skipped as not eligible

    def run(self, global_epoch: int = 1) -> None:
        """Synthesise every input and write the report; raise :class:`SynthesisError` when any input failed or
        none was eligible."""
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            reason = err.strerror or err
            raise OutputWriteError(f"cannot create the output folder '{self.output_dir}': {reason}.") from None
        if not os.access(self.output_dir, os.W_OK | os.X_OK):
            raise OutputWriteError(f"output folder '{self.output_dir}' is not writable.")
        remove_stale_partials(self.output_dir, suffixes=("", self.saver.output_ext), recursive=True)
        self.records, self._ineligible, finished = [], 0, False
        try:
            with sigterm_interrupts():
                super().run(global_epoch)
            finished = True
        finally:
            if finished or self.records:  # a run stopped before any input (e.g. a bad checkpoint) leaves nothing
                summary = self._report(finished)
        if any(r["status"] == FAILED for r in self.records) or self._nothing_eligible():
            raise SynthesisError(summary)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict) -> list:
        started = time.perf_counter()
        if ERROR_KEY in batchdata:  # the dataset could not load it
            return self._add(str(batchdata[self.image_key][0]), FAILED, batchdata[ERROR_KEY][0], "", started)
        if INELIGIBLE_KEY in batchdata:  # the dataset's checks refused it
            self._ineligible += 1
            return self._add(str(batchdata[self.image_key][0]), SKIPPED, batchdata[INELIGIBLE_KEY][0], "", started)
        source = str(batchdata[self.image_key].meta[ImageMetaKey.FILENAME_OR_OBJ][0])
        target = str(self.saver.output_path({ImageMetaKey.FILENAME_OR_OBJ: source}))
        earlier = next((r["input"] for r in self.records if r["output"] == target), None)
        if earlier is not None:
            return self._add(source, FAILED, f"its output {target} is that of {earlier} in this run", "", started)
        if os.path.exists(target) and not self.saver.overwrite:
            return self._add(source, SKIPPED, "the output exists (overwrite=False)", target, started)
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as err:
            return self._add(source, FAILED, describe_error(err), "", started)
        self._add(source, WRITTEN, "", target, started)
        return output

    def _nothing_eligible(self) -> bool:
        return bool(self.records) and self._ineligible == len(self.records)

    def _add(self, source: str, status: str, reason: str, output: str, started: float) -> list:
        """Keep and log one row; the iteration's (empty) output."""
        seconds = round(time.perf_counter() - started, 3)
        self.records.append({"input": source, "status": status, "reason": reason, "output": output, "seconds": seconds})
        (logger.warning if status == FAILED else logger.info)(
            f"{source}: {status}" + (f" - {reason}" if reason else "") + (f" -> {output}" if output else "")
        )
        return []

    def _report(self, finished: bool) -> str:
        """Write ``report.json`` (inputs a stopped run did not reach as skipped) and log the summary; return it."""
        items = [] if finished else list(getattr(getattr(self.data_loader, "dataset", None), "data", []))
        self.records += [
            {
                "input": str(item.get(self.image_key, item)),
                "status": SKIPPED,
                "reason": "not processed: the run stopped",
                "output": "",
                "seconds": 0.0,
            }
            for item in items[len(self.records) :]
        ]
        counts = {k: sum(r["status"] == k for r in self.records) for k in (WRITTEN, SKIPPED, FAILED)}
        report = {"output_dir": str(self.output_dir), "complete": finished, "counts": counts, "images": self.records}
        write_file_atomic(self.output_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        head = " stopped" if not finished else " found no eligible image" if self._nothing_eligible() else ""
        shown = SKIPPED if head == " found no eligible image" else FAILED  # the reason the run exits non-zero
        first = next((f" (first: {r['reason']})" for r in self.records if r["status"] == shown), "")
        summary = (
            f"NIfTI synthesis{head}: {len(self.records)} images, {counts[WRITTEN]} written, "
            f"{counts[SKIPPED]} skipped, {counts[FAILED]} failed{first}; report: {self.output_dir / 'report.json'}"
        )
        logger.info(summary)
        return summary
