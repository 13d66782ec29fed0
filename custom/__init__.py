"""PHMDiff components for MONAI: networks, losses, inferers, transforms, data preparation and DICOM I/O.

The package lives beside the bundle (``bundle/custom`` links here), so MONAI's bundle runner and MONAI Label,
which put the bundle folder on ``sys.path``, import it as ``custom``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["find_bundle_root"]


def find_bundle_root() -> str:
    """The bundle folder this package belongs to: ``<bundle>/custom``, or ``<repo>/custom`` beside ``<repo>/bundle``.

    Gives the configs a correct default ``bundle_root`` whether MONAI runs them from the repository root or
    from a copied bundle; ``--bundle_root`` overrides it.
    """
    package_parent = Path(__file__).absolute().parent.parent
    for candidate in (package_parent, package_parent / "bundle"):
        if (candidate / "configs" / "metadata.json").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"no bundle (configs/metadata.json) found at or below '{package_parent}'; set --bundle_root."
    )
