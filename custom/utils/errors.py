"""One clear line for the user when a bundle command stops on a known problem (bad input, checkpoint or output):
finding this package's error in a chain, describing it on one line, and the command line's excepthook."""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

__all__ = ["bundle_error", "describe_error", "is_bundle_command_line", "report_errors_briefly"]

_PACKAGE = __name__.split(".")[0]  # errors defined in this package describe the user's data, config or files


def bundle_error(exc: BaseException | None) -> BaseException | None:
    """The first exception of this package in ``exc``'s chain (``__cause__`` / ``__context__``), if any.

    MONAI's bundle runner wraps errors raised while instantiating or evaluating config items
    (``RuntimeError: Failed to evaluate ...``) and ``Compose`` wraps transform errors (``applying transform ...``);
    the message the user needs is the innermost one from this package.
    """
    return next((e for e in _chain(exc) if type(e).__module__.split(".")[0] == _PACKAGE), None)


def describe_error(exc: BaseException) -> str:
    """``<ErrorType>: <message>`` on one line, of :func:`bundle_error`'s error, else of the innermost one in the
    chain (the cause MONAI's wrappers hide): what a report row or a one-line exit shows."""
    found = bundle_error(exc) or list(_chain(exc))[-1]
    message = " ".join(str(found).split())
    message = message if len(message) <= 2000 else message[:2000] + " ..."
    return f"{type(found).__name__}: {message}" if message else type(found).__name__


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if sys.flags.dev_mode or not (isinstance(exc, KeyboardInterrupt) or bundle_error(exc)):
        sys.__excepthook__(exc_type, exc, tb)
        return
    print(f"(traceback hidden; `python -X dev -m monai.bundle ...` shows it)\n{describe_error(exc)}", file=sys.stderr)


def is_bundle_command_line() -> bool:
    """Whether this process is the command line ``python -m monai.bundle ...`` (not a bundle run in-process by MONAI
    Label, a notebook, a test or a script): only then do the configs' ``run`` steps act on ``sys.argv`` and
    ``sys.excepthook``."""
    return Path(sys.argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py")


def report_errors_briefly() -> None:
    """Make an uncaught error of this package end the process with one line, ``<ErrorType>: <message>`` naming the
    file or config id and the problem, instead of MONAI's chained traceback, and an interrupt (Ctrl-C, or SIGTERM
    during a synthesis run) with the line ``KeyboardInterrupt``; other errors keep the full traceback, and
    ``python -X dev`` shows it for ours too. The process still exits with status 1. Called first in the configs'
    ``run``.

    Only the command line ``python -m monai.bundle`` gets the hook (:func:`is_bundle_command_line`); a bundle run
    in-process
    (MONAI Label, a notebook, tests, ``monai.bundle.run`` from a script) leaves ``sys.excepthook`` as its caller
    set it. Library code raises ordinary exceptions (``ValueError``/``RuntimeError``/``OSError`` subclasses), never
    ``SystemExit``: how an error is printed and the exit status are for this command-line entry to decide.
    """
    if is_bundle_command_line():
        sys.excepthook = _hook
