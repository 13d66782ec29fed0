"""A MONAI Dataset for runs over many files: an input that fails to load is reported, not raised."""

from __future__ import annotations

from monai.data import Dataset

from ..utils.errors import bundle_error, describe_error
from ..transforms.utility import IneligibleImageError

__all__ = ["ERROR_KEY", "INELIGIBLE_KEY", "TolerantDataset"]

ERROR_KEY, INELIGIBLE_KEY = "error", "ineligible"


class TolerantDataset(Dataset):
    """MONAI's :class:`~monai.data.Dataset`, except that an item whose transform fails (an unreadable or unusable
    image) comes back as the item itself with ``ERROR_KEY`` holding the error in one line, so that a run over many
    files reports it and goes on (:class:`custom.engines.SynthesisEvaluator`); an image the model is not meant for
    (:class:`~custom.transforms.IneligibleImageError`) comes back so with ``INELIGIBLE_KEY`` holding why. Interrupts
    still stop it.

    Args:
        data: dict items, e.g. ``[{"image": "a.nii.gz"}]``.
        transform: as :class:`~monai.data.Dataset`.
    """

    def _transform(self, index: int) -> dict:
        try:
            return super()._transform(index)
        except Exception as err:
            found = bundle_error(err)
            if isinstance(found, IneligibleImageError):
                return {**self.data[index], INELIGIBLE_KEY: " ".join(str(found).split())}
            return {**self.data[index], ERROR_KEY: describe_error(err)}
