"""Import on first use: names a package exports whose module pulls in something heavy or optional."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_exports"]


def lazy_exports(package: str, lazy: Mapping[str, Sequence[str]]) -> Callable[[str], object]:
    """A module-level ``__getattr__`` (PEP 562) for ``package``: ``name`` listed under ``lazy[module]`` is imported
    from ``package.module`` when first used, so importing the package does not import that module.

    Example::

        __getattr__ = lazy_exports(__name__, {"demo": ["generate_demo_dataset"]})
    """

    def __getattr__(name: str) -> object:
        for module, names in lazy.items():
            if name in names:
                return getattr(importlib.import_module(f".{module}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
