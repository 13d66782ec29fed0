"""Config values as the bundle's command line gives them: strict flags, and overrides checked before anything runs.

MONAI's runner (``python -m monai.bundle run``, a ``fire`` CLI) accepts any ``--id value``: a mistyped id is added
to the config and silently ignored, ``--overwrite false`` arrives as the text ``'false'`` (true to Python), and a
wrong value fails deep inside a component with a long traceback. :func:`check_overrides`, called first in the
configs' ``run`` (``initialize`` runs before MONAI puts a copied bundle on ``sys.path``), refuses such overrides
with one line naming the id and the value, before anything is built.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import pydoc
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from monai.bundle import ConfigComponent, ConfigParser, ConfigWorkflow, ReferenceResolver
from monai.bundle.scripts import create_workflow, run
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

from custom.utils.errors import is_bundle_command_line

__all__ = [
    "ConfigError",
    "as_flag",
    "check_overrides",
    "quiet_library_notices",
    "POSITIVE_INTEGERS",
]

_NONE_DROPPED = "MONAI's runner drops None typed on the command line; put null in a file given with --args_file."
_FLAG_WORDS = {"true": True, "1": True, "false": False, "0": False}
POSITIVE_INTEGERS = (  # ids (last part) that count something: 0 or less is never meant
    "num_inference_steps",
    "max_epochs",
    "val_interval",
    "slice_batch_size",
    "volumes_per_batch",
    "slices_per_volume",
    "val_slices_per_volume",
)


class ConfigError(ValueError):
    """A config id the bundle cannot use: unknown, or set to a value it cannot take; the message names both."""


def as_flag(value: Any, name: str) -> bool:
    """``value`` as a bool: a bool, 0 or 1, or the text true / false / 1 / 0 in any case (the command line gives
    text); anything else raises :class:`ConfigError` naming ``name``, the config id.

    Example::

        as_flag("FALSE", "overwrite")  # False
    """
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if word not in _FLAG_WORDS:
        raise ConfigError(f"{name}={value!r} is not a flag; use true or false (or 1 / 0).")
    return _FLAG_WORDS[word]


def check_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse command-line overrides that name no config id, or give a value the id cannot take, with a
    :class:`ConfigError` naming the id and the value (and, for an unknown id, the ids that exist there).

    The overrides are read from ``sys.argv`` as MONAI's ``fire`` CLI parses them, and checked against the config
    files named there (``--config_file``, ``--args_file``). Values are checked against the default (the config's,
    or for an argument of a component that the config does not set, its ``_target_``'s: a number for a number; a
    flag for a flag: true/false/1/0 for a top-level id, whose user parses it with :func:`as_flag`, ``True``/``False``
    inside a component, which takes the value as it is) and by the rules for counts (:data:`POSITIVE_INTEGERS`),
    ``learning_rate``, ``*_modality`` and ``*_pattern`` ids; ``None`` typed for an id that is not ``None`` is refused,
    since MONAI's runner would drop it unsaid. ``$`` expressions, ``@`` references and ``%`` macros are not checked.
    A new argument of a component (``--validate#dataloader#pin_memory True``) is accepted when its ``_target_``
    takes it.

    Args:
        argv: the arguments after ``python -m monai.bundle`` (``["run", "--config_file", ...]``); by default
            ``sys.argv[1:]`` when this process is that command, else nothing is checked (in-process workflows,
            MONAI Label).
    """
    if argv is None:
        if not is_bundle_command_line():
            return
        argv = sys.argv[1:]
    if not argv or argv[0] != "run":
        return
    args = typed = _fire_keywords(argv[1:])
    if args.get("args_file"):
        args = {**ConfigParser.load_config_file(args["args_file"]), **args}
    if not args.get("config_file"):
        return
    parser = ConfigParser()
    parser.read_config(args["config_file"])
    runner = {
        name
        for fn in (run, create_workflow, ConfigWorkflow)
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is not p.VAR_KEYWORD
    }
    tracking = args.get("tracking")
    if tracking:  # its settings (experiment_name, run_name, ...) are overrides MONAI adds to the config itself
        settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else tracking
        runner |= set((settings or ConfigParser.load_config_files(tracking))["configs"])
    for given, value in args.items():
        if given in runner:
            continue
        key = "#".join(ReferenceResolver.split_id(given))  # as the configs write ids (MONAI also takes '::')
        unknown = _unknown_id(parser, key)
        if unknown:
            raise ConfigError(f"--{key}: {unknown}")
        dropped = value is None and given in typed and parser.get(key) is not None  # an args_file's null is kept
        problem = _NONE_DROPPED if dropped else _value_problem(parser, key, value)
        if problem:
            raise ConfigError(f"--{key} {value!r}: {problem}")


def _not_nvimagecodec(record: logging.LogRecord) -> bool:
    return "nvImageCodec is not available" not in record.getMessage()


def quiet_library_notices() -> None:
    """Silence what MONAI says on every run that means nothing to a user of this bundle: nvImageCodec (a GPU DICOM
    decoder) is missing, so pydicom's decoders are used, which are the ones this bundle uses anyway. Called in the
    configs' ``run``, at the entry point; importing the package changes no filter. Calling it again adds none.
    """
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(_not_nvimagecodec)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")


def _fire_keywords(tokens: Sequence[str]) -> dict[str, Any]:
    """``--name value``, ``--name=value`` and bare ``--name`` (True), parsed as ``fire`` parses them for ``run``."""
    from fire.parser import DefaultParseValue, SeparateFlagArgs  # the command line's parser, there whenever it runs

    tokens = SeparateFlagArgs(list(tokens))[0]
    found, i = {}, 0
    while i < len(tokens):
        token, i = tokens[i], i + 1
        if not token.startswith("--"):
            continue  # a positional argument: run_id, init_id, ...
        name, equals, value = token[2:].partition("=")
        if not equals:
            value = "True"
            if i < len(tokens) and not tokens[i].startswith("--"):
                value, i = tokens[i], i + 1
        found[name.replace("-", "_")] = DefaultParseValue(value)
    return found


def _unknown_id(parser: ConfigParser, key: str) -> str | None:
    """Why ``key`` names nothing in the config (with the ids that exist where it points), or None."""
    if key in parser or key.startswith(parser.meta_key):
        return None
    parts = key.split("#")
    depth = next(n for n in range(len(parts) - 1, -1, -1) if "#".join(parts[:n]) in parser)
    parent = "#".join(parts[:depth])
    node = parser[parent]
    if depth == len(parts) - 1 and isinstance(node, dict) and "_target_" in node and _takes(node, parts[-1]):
        return None
    if not isinstance(node, (dict, list)):
        return f"'{parent}' holds a value, not settings."
    names = [str(k) for k in (node if isinstance(node, dict) else range(len(node))) if k != parser.meta_key]
    guess = difflib.get_close_matches(parts[depth], names, n=1)
    hint = f" (did you mean '{'#'.join([*parts[:depth], guess[0]])}'?)" if guess else ""
    where = f"in '{parent}'" if parent else "at the top level"
    return f"no config id '{key}'{hint}; the ids {where} are: {', '.join(names)}."


def _parameters(component: Any) -> dict[str, inspect.Parameter] | None:
    """The parameters of the ``_target_`` of ``component``, or None when that cannot be told."""
    if not (isinstance(component, dict) and "_target_" in component):
        return None
    try:
        return dict(inspect.signature(pydoc.locate(ConfigComponent(component).resolve_module_name())).parameters)
    except (TypeError, ValueError):  # an expression, or not a callable MONAI can find: MONAI reports it itself
        return None


def _takes(component: dict, name: str) -> bool:
    """Whether the ``_target_`` of ``component`` takes the keyword ``name`` (True when that cannot be told)."""
    if name.startswith("_") and name.endswith("_"):  # _disabled_, _requires_, _mode_, _desc_
        return True
    parameters = _parameters(component)
    return parameters is None or any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters.values())


def _default(parser: ConfigParser, key: str) -> Any:
    """The default of config id ``key``: the config's value, ``@`` references followed, or for an argument of a
    component that the config does not set, the default in its ``_target_``'s signature (None when it has none)."""
    if key not in parser:
        parent, _, name = key.rpartition("#")
        parameter = (_parameters(parser.get(parent)) or {}).get(name)
        return None if parameter is None or parameter.default is parameter.empty else parameter.default
    default = parser[key]
    while isinstance(default, str) and default[:1] == "@" and default[1:] in parser:
        default = parser[default[1:]]
    return default


def _value_problem(parser: ConfigParser, key: str, value: Any) -> str | None:
    """Why ``value`` cannot be taken by the config id ``key``, or None."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        return None
    default = _default(parser, key)
    name = key.split("#")[-1]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool) and not isinstance(value, bool):
        if "#" in key:
            return "a flag inside a component takes True or False (the text 'false' would count as true)."
        try:
            as_flag(value, key)
        except ConfigError:
            return "not a flag; use true or false (or 1 / 0)."
    elif isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
        if not number:
            return f"not a number (the default is {default!r})."
        if isinstance(default, int) and not float(value).is_integer():
            return f"not a whole number (the default is {default!r})."
    if name in POSITIVE_INTEGERS and not (number and float(value).is_integer() and value >= 1):
        return "must be a whole number of at least 1."
    if name == "learning_rate" and not (number and value > 0):
        return "must be a number above 0."
    if name.endswith("_modality"):
        from .transforms import MODALITIES  # here: custom.transforms imports this module

        if not (isinstance(value, str) and value.upper() in MODALITIES):
            return f"not a modality; choose one of {', '.join(MODALITIES)}."
    if name.endswith("_pattern") and value is not None:
        try:
            re.compile(str(value))
        except re.error as err:
            return f"not a valid regular expression ({err})."
    return None
