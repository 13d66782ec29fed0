"""PHMDiff components for MONAI: networks, losses, inferers, transforms, data preparation and DICOM I/O.

The package lives beside the bundle (``bundle/custom`` links here), so MONAI's bundle runner and MONAI Label,
which put the bundle folder on ``sys.path``, import it as ``custom``.
"""
