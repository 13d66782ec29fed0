"""Reading and writing images safely: a file that cannot be read is named with the reason; an output is never
overwritten by accident nor left half-written, and a failed write names the path."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, LoadImaged, MapTransform, SaveImage, SaveImaged
from monai.utils import MetaKeys, ensure_tuple, ensure_tuple_rep

__all__ = [
    "ImageReadError",
    "SafeLoadImage",
    "SafeLoadImaged",
    "OutputExistsError", "OutputWriteError", "SafeSaveImage", "SafeSaveImaged", "PARTIAL_MARKER"]

PARTIAL_MARKER = ".partial-"  # temporary files are hidden, ``.{name}.partial-{pid}{ext}``, in the output folder


class ImageReadError(ValueError):
    """An input file that cannot be read as an image; the message names the file and the reason."""


class SafeLoadImage(LoadImage):
    """MONAI's :class:`~monai.transforms.LoadImage` whose failures name the file and the reason in one line: a
    missing file, a file no reader recognises (not an image), or a truncated or corrupt file (MONAI lets e.g.
    nibabel's ``EOFError`` through without the path).

    Args:
        args, kwargs: as :class:`~monai.transforms.LoadImage`.
    """

    def __call__(self, filename, reader=None):
        try:
            return super().__call__(filename, reader)
        except Exception as err:
            names = [str(f) for f in (filename if isinstance(filename, (list, tuple)) else [filename])]
            shown = ", ".join(f"'{n}'" for n in names)
            missing = [n for n in names if not os.path.exists(n)]
            if missing:
                raise ImageReadError(f"input {', '.join(repr(n) for n in missing)} does not exist.") from err
            if "cannot find a suitable reader" in str(err):
                reason = "no image reader recognises it (is it a NIfTI/NRRD/MHA/DICOM image?)"
            else:
                detail = str(err).splitlines()[0] if str(err) else ""
                reason = f"it is not a valid image, or is truncated or corrupt ({type(err).__name__}: {detail})"
            raise ImageReadError(f"input {shown} cannot be read as an image: {reason}.") from err


class SafeLoadImaged(LoadImaged):
    """:class:`~monai.transforms.LoadImaged` with the errors of :class:`SafeLoadImage`.

    Args:
        keys, args, kwargs: as :class:`~monai.transforms.LoadImaged`.
    """

    def __init__(self, keys: KeysCollection, *args, **kwargs) -> None:
        super().__init__(keys, *args, **kwargs)
        self._loader.__class__ = SafeLoadImage  # the loader MONAI configured, with SafeLoadImage's errors (no new state)


class OutputWriteError(OSError):
    """An output file could not be written; the message names the path and the reason. Nothing was left behind."""


class OutputExistsError(OutputWriteError, FileExistsError):
    """The output file exists already and ``overwrite`` is False."""


class SafeSaveImage(SaveImage):
    """MONAI's :class:`~monai.transforms.SaveImage` made safe for users' folders.

    - an existing output is never replaced unless ``overwrite=True`` (MONAI's saver replaces it silently);
    - the image is written to a hidden temporary file in the output folder, flushed to disk, then renamed onto
      the output name (``os.replace``, atomic on one file system), so a killed process or a full disk never leaves
      a half-written output under the real name; the temporary file is removed on failure;
    - a folder that cannot be created or written, and a failed write, raise :class:`OutputWriteError` naming the
      path and the reason.

    Naming, writers and all other arguments are MONAI's; the output path is stored in the metadata
    (``saved_to``) as with ``savepath_in_metadict=True``.

    Args:
        overwrite: replace an existing output file.
        kwargs: as :class:`~monai.transforms.SaveImage`.

    Example::

        saver = SafeSaveImage(output_dir="out", output_postfix="synth", separate_folder=False)
        saver(image)  # MetaTensor loaded by LoadImage: writes out/<name>_synth.nii.gz
    """

    def __init__(self, overwrite: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.overwrite = overwrite

    def _target(self, meta_data: Mapping | None, filename: str | os.PathLike | None) -> Path:
        if filename is not None:
            return Path(f"{filename}{self.output_ext}")
        kw = self.fname_formatter(meta_data, self)
        try:
            return Path(self.folder_layout.filename(**kw))  # creates the folder (FolderLayout makedirs=True)
        except OSError as err:
            where = err.filename or self.folder_layout.output_dir
            raise OutputWriteError(f"cannot create the output folder '{where}': {err.strerror or err}.") from None

    def __call__(
        self,
        img: torch.Tensor,
        meta_data: dict | None = None,
        filename: str | os.PathLike | None = None,
    ) -> torch.Tensor:
        """Write ``img`` (channel first), named from its metadata like MONAI's saver, or ``{filename}{output_ext}``."""
        meta_data = img.meta if isinstance(img, MetaTensor) else meta_data
        target = self._target(meta_data, filename)
        if target.exists() and not self.overwrite:
            raise OutputExistsError(
                f"output '{target}' exists already; it was left untouched. Choose another output folder, remove "
                "the file, or set overwrite=True."
            )
        folder = target.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputWriteError(f"cannot create the output folder '{folder}': {err.strerror or err}.") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputWriteError(f"output folder '{folder}' is not writable; cannot write '{target.name}'.")
        stem = target.name[: -len(self.output_ext)] if target.name.endswith(self.output_ext) else target.name
        partial = folder / f".{stem}{PARTIAL_MARKER}{os.getpid()}"  # the writer appends output_ext
        partial_file = Path(f"{partial}{self.output_ext}")
        try:
            self._write(img, meta_data, partial)
            with open(partial_file, "rb+") as stream:
                os.fsync(stream.fileno())
            os.replace(partial_file, target)
        except BaseException as err:
            partial_file.unlink(missing_ok=True)
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            raise OutputWriteError(f"writing '{target}' failed: {reason}. No output was left at that path.") from err
        if meta_data is not None:
            meta_data[MetaKeys.SAVED_TO] = str(target)
        return img

    def _write(self, img: torch.Tensor, meta_data: dict | None, partial: Path) -> None:
        """MONAI's writer loop, except that an ``OSError`` (full disk, permissions) is raised at once: another
        writer would fail the same way and MONAI's 'no suitable writer' message would hide the reason."""
        if meta_data:  # as MONAI's SaveImage: metadata without a channel axis means the data has none either
            if len(ensure_tuple(meta_data.get("spatial_shape", ()))) >= len(img.shape):
                self.data_kwargs["channel_dim"] = None
        errors = []
        for writer_cls in self.writers:
            try:
                writer = writer_cls(**self.init_kwargs)
                writer.set_data_array(data_array=img, **self.data_kwargs)
                writer.set_metadata(meta_dict=meta_data, **self.meta_kwargs)
                writer.write(f"{partial}{self.output_ext}", **self.write_kwargs)
            except OSError:
                raise
            except Exception as err:  # this writer cannot handle the data or format: try the next one
                logging.getLogger(type(self).__name__).debug(err, exc_info=True)
                errors.append(f"{getattr(writer_cls, '__name__', writer_cls)}: {err}")
            else:
                self.writer_obj = writer
                self._data_index += 1
                return
        raise RuntimeError(f"no writer could write '{self.output_ext}' ({'; '.join(errors)})")


class SafeSaveImaged(SaveImaged):
    """Dictionary wrapper of :class:`SafeSaveImage`.

    Args:
        keys: keys of the images to save.
        meta_keys, meta_key_postfix, allow_missing_keys: as :class:`~monai.transforms.SaveImaged`.
        overwrite: replace existing output files.
        kwargs: saver arguments, as :class:`~monai.transforms.SaveImaged` (``output_dir``, ``output_postfix``, ...).
    """

    def __init__(
        self,
        keys: KeysCollection,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = "meta_dict",
        allow_missing_keys: bool = False,
        overwrite: bool = False,
        **kwargs,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.meta_keys = ensure_tuple_rep(meta_keys, len(self.keys))
        self.meta_key_postfix = ensure_tuple_rep(meta_key_postfix, len(self.keys))
        self.saver = SafeSaveImage(overwrite=overwrite, **kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        return super().__call__(data)
