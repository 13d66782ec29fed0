"""MONAI's ``StatsHandler`` logging an error of this package (bad input, checkpoint, non-finite loss) as one line;
the helpers and the command line's excepthook are in :mod:`custom.utils.errors`."""

from __future__ import annotations

import sys

from ignite.engine import Engine
from monai.handlers import StatsHandler

from ..utils.errors import bundle_error, describe_error

__all__ = ["BriefErrorStatsHandler"]


class BriefErrorStatsHandler(StatsHandler):
    """
    MONAI's :class:`~monai.handlers.StatsHandler`, except that an error of this package raised during an engine run
    (bad input, checkpoint, non-finite loss) is logged as one line instead of a traceback, so that the user sees
    what is wrong rather than library internals; the process then ends with that error's own line
    (:func:`custom.utils.report_errors_briefly`); an interrupt too. Other errors, and runs under ``python -X dev``,
    keep MONAI's traceback.
    """

    def exception_raised(self, _engine: Engine, e: BaseException) -> None:
        if sys.flags.dev_mode or not (isinstance(e, KeyboardInterrupt) or bundle_error(e)):
            super().exception_raised(_engine, e)  # logs the traceback and re-raises
        self.logger.error(f"{type(_engine).__name__} stopped: {describe_error(e)}")
        raise e
