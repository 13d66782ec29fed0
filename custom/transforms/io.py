"""Reading and writing images safely: a file that cannot be read is named with the reason, and one whose header
declares more data than memory or the file allows is refused before anything is allocated; an output is never
overwritten by accident, written outside its output folder, nor left half-written, and a failed write names the
path."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import torch
from monai import __version__ as monai_version
from monai.config import KeysCollection
import numpy as np
from monai.data import MetaTensor, NibabelWriter
from monai.data.utils import to_affine_nd
from monai.transforms import LoadImage, LoadImaged, MapTransform, SaveImage, SaveImaged
from monai.utils import MetaKeys, ensure_tuple, ensure_tuple_rep

from ..bundle import as_flag

__all__ = [
    "ImageReadError",
    "check_nifti_size",
    "SafeLoadImage",
    "SafeLoadImaged",
    "NibabelHeaderWriter",
    "OutputExistsError",
    "OutputWriteError",
    "SafeSaveImage",
    "SafeSaveImaged",
    "PARTIAL_MARKER",
    "remove_stale_partials",
    "write_file_atomic",
    "MAX_VOXELS",
]

PARTIAL_MARKER = ".partial-"  # temporary files are hidden, ``.{name}.partial-{pid}{ext}``, in the output folder
MAX_VOXELS = 2**29  # 2 GiB as float32 (812^3 voxels): above any clinical volume, below what exhausts a machine
DEFLATE_MAX_RATIO = 1032  # gzip (DEFLATE) cannot expand a file more than 1032-fold (zlib's documented limit)


class ImageReadError(ValueError):
    """An input file that cannot be read as an image; the message names the file and the reason."""


def check_nifti_size(filename: str | os.PathLike, max_voxels: int = MAX_VOXELS) -> None:
    """Refuse, from its header alone, a NIfTI file that declares more than ``max_voxels`` voxels or more data than
    the file can hold (``.nii``: its size; ``.nii.gz``: 1032 times its size, the most DEFLATE expands), before an
    array is allocated: a forged or damaged header must not cost gigabytes of memory. Other files pass.

    Args:
        filename: the file.
        max_voxels: the largest voxel count accepted.
    """
    name = str(filename)
    if not name.lower().endswith((".nii", ".nii.gz")) or not os.path.isfile(name):
        return
    try:
        header = nib.load(name).header
    except Exception:  # not a NIfTI header: the loader names the file and the reason
        return
    shape = tuple(int(n) for n in header.get_data_shape())
    voxels, size = math.prod(shape), os.path.getsize(name)
    declared = voxels * header.get_data_dtype().itemsize
    holds = size * DEFLATE_MAX_RATIO if name.lower().endswith(".gz") else size - int(header.get_data_offset())
    if voxels > max_voxels:
        problem = f"more than max_voxels={max_voxels:,}"
    elif declared > holds:
        problem = f"{declared:,} bytes, more than the {size:,}-byte file can hold: a forged header or a truncated file"
    else:
        return
    raise ImageReadError(f"input '{name}' declares {' x '.join(map(str, shape))} = {voxels:,} voxels ({problem}).")


class SafeLoadImage(LoadImage):
    """MONAI's :class:`~monai.transforms.LoadImage` whose failures name the file and the reason in one line: a
    missing file, a file no reader recognises (not an image), or a truncated or corrupt file (MONAI lets e.g.
    nibabel's ``EOFError`` through without the path); a NIfTI file is first checked by :func:`check_nifti_size`.

    Args:
        max_voxels: the largest NIfTI voxel count accepted.
        args, kwargs: as :class:`~monai.transforms.LoadImage`.
    """

    def __init__(self, *args, max_voxels: int = MAX_VOXELS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_voxels = max_voxels

    def __call__(self, filename, reader=None):
        for name in filename if isinstance(filename, (list, tuple)) else [filename]:
            check_nifti_size(name, self.max_voxels)
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
        max_voxels: the largest NIfTI voxel count accepted.
        keys, args, kwargs: as :class:`~monai.transforms.LoadImaged`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader=None,
        dtype=np.float32,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = "meta_dict",
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
        *args,
        max_voxels: int = MAX_VOXELS,
        **kwargs,
    ) -> None:
        loading = (
            reader,
            image_only,
            dtype,
            ensure_channel_first,
            simple_keys,
            prune_meta_pattern,
            prune_meta_sep,
            expanduser,
        )
        super().__init__(
            keys,
            reader,
            dtype,
            meta_keys,
            meta_key_postfix,
            overwriting,
            image_only,
            ensure_channel_first,
            simple_keys,
            prune_meta_pattern,
            prune_meta_sep,
            allow_missing_keys,
            expanduser,
            *args,
            **kwargs,
        )
        # the loader LoadImaged builds, with SafeLoadImage's errors: built by its public constructor, same arguments
        use_loader(self, SafeLoadImage(*loading, *args, max_voxels=max_voxels, **kwargs))


def use_loader(transform: LoadImaged, loader: LoadImage) -> None:
    """Make ``transform`` load through ``loader``. MONAI (1.6.1) has no public way to give ``LoadImaged`` its
    ``LoadImage``: it builds one in ``__init__`` and calls ``self._loader`` in ``__call__`` and ``register``. This and
    :func:`loader_of` are the only places that rely on that; they fail loudly if MONAI changes it
    (tests/test_reliability_inputs.py)."""
    loader_of(transform)
    transform._loader = loader


def loader_of(transform: LoadImage | LoadImaged) -> LoadImage:
    """The ``LoadImage`` that ``transform`` loads through (``transform`` itself for a ``LoadImage``)."""
    if isinstance(transform, LoadImage):
        return transform
    if not isinstance(getattr(transform, "_loader", None), LoadImage):
        raise RuntimeError(
            f"monai {monai_version}: LoadImaged no longer keeps its LoadImage in '_loader'; "
            "custom.transforms.io.use_loader and loader_of must be adapted to this MONAI version."
        )
    return transform._loader


class NibabelHeaderWriter(NibabelWriter):
    """MONAI's :class:`~monai.data.NibabelWriter`, keeping what the source image's header says about its space.

    MONAI's writer squeezes every trailing singleton axis (an (X, Y, 1) slice comes back as a 2-D (X, Y) image)
    and writes qform and sform code 1 (scanner space) without units (an image in template space, code 4, loses
    that). Here only a single channel axis is dropped, and the qform/sform codes and the units of the metadata
    (``qform_code``, ``sform_code``, ``xyzt_units``, as MONAI's NIfTI reader gives them) are written; without
    them, MONAI's code 1.
    """

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        super().set_data_array(data_array, channel_dim, squeeze_end_dims=False, **kwargs)  # channel last
        if squeeze_end_dims and self.data_obj.shape[-1] == 1:  # the channel only, not the image's own axes
            self.data_obj = self.data_obj[..., 0]

    def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options):
        super().set_metadata(meta_dict, resample, **options)
        keys = ("qform_code", "sform_code", "xyzt_units")
        self.header_fields = {k: int(np.asarray(meta_dict[k]).item()) for k in keys if k in (meta_dict or {})}

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs):
        """As MONAI's ``write`` (whose codes are fixed at 1), with the header fields of ``set_metadata``."""
        fields = getattr(self, "header_fields", {})
        affine = to_affine_nd(3, np.asarray(self.affine if self.affine is not None else np.eye(4), np.float64))
        image = self.create_backend_obj(self.data_obj, affine=affine, dtype=self.output_dtype, **obj_kwargs)
        image.set_sform(affine, code=fields.get("sform_code", 1))
        image.set_qform(affine, code=fields.get("qform_code", 1))
        if "xyzt_units" in fields:
            image.header["xyzt_units"] = fields["xyzt_units"]
        nib.save(image, filename)


class OutputWriteError(OSError):
    """An output file could not be written; the message names the path and the reason. Nothing was left behind."""


class OutputExistsError(OutputWriteError, FileExistsError):
    """The output file exists already and ``overwrite`` is False."""


def _exists(target: Path) -> OutputExistsError:
    return OutputExistsError(
        f"output '{target}' exists already; it was left untouched. Choose another output folder, remove the file, "
        "or set overwrite=True."
    )


class SafeSaveImage(SaveImage):
    """MONAI's :class:`~monai.transforms.SaveImage` made safe for users' folders.

    - an existing output is never replaced unless ``overwrite`` (MONAI's saver replaces it silently), even one
      another run writes meanwhile: without ``overwrite`` the output is published with a hard link, which fails
      when the name exists (:class:`OutputExistsError`); the output folder's file system must support hard links;
    - an output never lies outside ``output_dir``: a file MONAI's naming would put outside it (an input outside
      ``data_root_dir``, ``..`` in a datalist, ``data_root_dir`` a file, a link) goes directly into ``output_dir``;
    - the image is written to a hidden temporary file in the output folder, flushed to disk, then renamed (or
      linked) onto the output name, atomic on one file system, so a killed process or a full disk never leaves a
      half-written output under the real name; the temporary file is removed on failure;
    - a folder that cannot be created or written, and a failed write, raise :class:`OutputWriteError` naming the
      path and the reason.

    Naming (MONAI's ``FolderLayout``), writers and all other arguments are MONAI's, except that NIfTI is written by
    :class:`NibabelHeaderWriter` (the source's shape and header codes kept) unless ``writer`` is given; the output
    path is stored in the metadata (``saved_to``) as with ``savepath_in_metadict=True``.

    Args:
        overwrite: replace an existing output file; a bool, or true/false/1/0 as text (:func:`custom.bundle.as_flag`).
        kwargs: as :class:`~monai.transforms.SaveImage`.

    Example::

        saver = SafeSaveImage(output_dir="out", output_postfix="synth", separate_folder=False)
        saver(image)  # MetaTensor loaded by LoadImage: writes out/<name>_synth.nii.gz
    """

    def __init__(self, overwrite: bool | str = False, **kwargs) -> None:
        if kwargs.get("writer") is None and str(kwargs.get("output_ext", ".nii.gz")).lower() in (".nii", ".nii.gz"):
            kwargs["writer"] = NibabelHeaderWriter
        super().__init__(**kwargs)
        self.overwrite = as_flag(overwrite, "overwrite")
        self.folder_layout.makedirs = False  # made in __call__, once the path is known to lie in output_dir

    def output_path(self, meta_data: Mapping | None) -> Path:
        """The output file for an image with ``meta_data``: MONAI's name, or ``output_dir/<file name>`` when that
        name would lie outside ``output_dir`` (paths resolved, links followed)."""
        target = Path(self.folder_layout.filename(**self.fname_formatter(meta_data, self)))
        root = Path(self.folder_layout.output_dir)
        return target if target.resolve().is_relative_to(root.resolve()) else root / target.name

    def _target(self, meta_data: Mapping | None, filename: str | os.PathLike | None) -> Path:
        return Path(f"{filename}{self.output_ext}") if filename is not None else self.output_path(meta_data)

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
            raise _exists(target)
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
            if self.overwrite:
                os.replace(partial_file, target)
            else:
                self._publish_new(partial_file, target)
        except BaseException as err:
            partial_file.unlink(missing_ok=True)
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            if isinstance(err, FileExistsError) and not self.overwrite:
                raise _exists(target) from None
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            raise OutputWriteError(f"writing '{target}' failed: {reason}. No output was left at that path.") from err
        if meta_data is not None:
            meta_data[MetaKeys.SAVED_TO] = str(target)
        return img

    @staticmethod
    def _publish_new(partial_file: Path, target: Path) -> None:
        """Move the written file onto ``target`` unless ``target`` exists: a hard link, unlike a rename, fails when
        another run wrote the target since the check. File systems without hard links (FAT, some SMB shares) get
        the rename after a last check instead."""
        try:
            os.link(partial_file, target)
        except FileExistsError:
            raise
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise
            if target.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
            os.replace(partial_file, target)
            return
        partial_file.unlink()

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
                count_written(self)
                return
        raise RuntimeError(f"no writer could write '{self.output_ext}' ({'; '.join(errors)})")


def count_written(saver: SaveImage) -> None:
    """Count one more image written by ``saver``, as ``SaveImage.__call__`` does after a write. MONAI (1.6.1) keeps
    the count in ``_data_index``, with no public API: its ``default_name_formatter`` names an image without a file
    name by it (``0``, ``1``, ...). This is the only place that relies on that; it fails loudly if MONAI changes it
    (tests/test_reliability_inputs.py)."""
    if not isinstance(getattr(saver, "_data_index", None), int):
        raise RuntimeError(
            f"monai {monai_version}: SaveImage no longer counts written images in '_data_index'; "
            "custom.transforms.io.count_written must be adapted to this MONAI version."
        )
    saver._data_index += 1


class SafeSaveImaged(SaveImaged):
    """Dictionary wrapper of :class:`SafeSaveImage`.

    Args:
        keys: keys of the images to save.
        meta_keys, meta_key_postfix, allow_missing_keys: as :class:`~monai.transforms.SaveImaged`.
        overwrite: replace existing output files (a bool, or true/false/1/0 as text).
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


def write_file_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8, or bytes) to ``path`` through a hidden temporary file of this process
    (``.{name}.partial-{pid}``), flushed to disk, then renamed onto ``path``: nobody reads half a file, and two
    processes never share a temporary file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}{PARTIAL_MARKER}{os.getpid()}")
    partial.unlink(missing_ok=True)  # a leftover of an earlier process with this pid, or a planted link
    try:
        # O_EXCL | O_NOFOLLOW: a link planted at the predictable name between unlink and open is not followed
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as stream:
            stream.write(content.encode("utf-8") if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def remove_stale_partials(
    folder: str | os.PathLike, suffixes: Sequence[str] = ("",), recursive: bool = False
) -> list[Path]:
    """Remove the temporary files this project's writers leave when killed, ``.{name}.partial-{pid}{suffix}``
    (:func:`write_file_atomic`: no suffix; :class:`SafeSaveImage`: its ``output_ext``), whose process no longer
    runs. Only names of exactly that form are taken; those of running processes, links, and anything in a linked
    folder stay. Returns the removed paths.

    Args:
        folder: the output folder.
        suffixes: what may follow the pid, e.g. ``("", ".nii.gz")``.
        recursive: also search its sub-folders (a saver's output layout may have them).
    """
    ends = "|".join(re.escape(s) for s in sorted(set(suffixes), key=len, reverse=True))
    pattern = re.compile(rf"\..+{re.escape(PARTIAL_MARKER)}(\d+)(?:{ends})")
    removed = []
    for dirpath, dirnames, filenames in os.walk(folder):  # links to folders are not followed
        if not recursive:
            dirnames.clear()
        for name in filenames:
            path = Path(dirpath, name)
            found = pattern.fullmatch(name)
            if found and not path.is_symlink() and path.is_file() and not _running(int(found.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True
