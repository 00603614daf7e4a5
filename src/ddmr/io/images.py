"""Reading and writing 3D images and label maps (NIfTI, NRRD, MHA) with their geometry.

Every reader validates its input, raising :class:`ddmr.errors.InputError` with one line
that names the file and the problem, and checks the image's size against the memory
budget before its voxels are read; every writer is atomic (:mod:`ddmr.io.files`).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ddmr.errors import DDMRError, InputError
from ddmr.io.convert import to_sitk
from ddmr.io.files import atomic_path, file_extension
from ddmr.memory import check_memory_budget, shape_text
from ddmr.spatial.grid import Geometry, check_geometry

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike[str]


NIFTI_EXTENSIONS = (".nii.gz", ".nii")
ITK_EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")
READ_EXTENSIONS = NIFTI_EXTENSIONS + ITK_EXTENSIONS
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")

def _check_readable(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an image file")
    extension = file_extension(path)
    if extension not in READ_EXTENSIONS:
        raise InputError(
            f"{path}: unsupported file type {extension or '(none)'!r}; "
            f"expected one of {', '.join(READ_EXTENSIONS)}"
        )
    return path

def _check_writable(path: PathLike) -> Path:
    path = Path(path)
    if file_extension(path) not in WRITE_EXTENSIONS:
        raise InputError(
            f"{path}: cannot write file type {file_extension(path) or '(none)'!r}; "
            f"use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file name")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    return path

def _check_nifti_zooms(path: Path, image: Any) -> None:
    """nibabel silently replaces zero voxel sizes by 1 mm when it loads a header; when no
    sform gives the geometry, look at the stored voxel sizes themselves."""
    import nibabel as nib

    header = image.header
    if int(header.get("sform_code", 0)) > 0:
        return
    with nib.openers.ImageOpener(str(path)) as handle:
        block = handle.read(header.sizeof_hdr)
    raw = type(header)(block, check=False)
    zooms = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(
            f"{path}: voxel spacing must be positive, got "
            f"({', '.join(f'{s:g}' for s in zooms)}) mm"
        )


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's own console logger while a header is read: it prints header fixes
    ("pixdim[1,2,3] should be non-zero; setting 0 dims to 1") on a line of its own, and
    ddmr reports the problems it cares about itself, as one line."""
    import logging

    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_dimensions(path: Path, shape: Sequence[int]) -> None:
    """3D, or 3D followed by axes of length 1 (checked from the header, before reading)."""
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise InputError(f"{path}: image has shape {shape}, expected a 3D volume")


_STDERR_LOCK = threading.Lock()


@contextmanager
def _native_stderr(into: list[str]) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while a C++ library (ITK's MetaIO) works:
    what it prints there on its own ends in ``into`` (one string) instead of on a line of
    its own. One thread at a time (the descriptor is the process's)."""
    import tempfile

    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace").strip()
            if text:
                into.append(text)


_ITK_PREFIX = re.compile(r"^(ITK ERROR: \w+\(0x[0-9a-fA-F]+\): |sitk::ERROR: |Reason: )")
_SOURCE_LOCATION = re.compile(r"(^Exception thrown in SimpleITK \w+: )?\S+\.(cxx|cpp|hxx|h):\d+:?$")


def _itk_detail(error: BaseException, printed: Sequence[str]) -> str:
    """SimpleITK's exception text without its C++ source locations and prefixes, on one
    line, with what ITK printed on its own (``printed``) after it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    kept = [_ITK_PREFIX.sub("", line) for line in lines if not _SOURCE_LOCATION.search(line)]
    text = " ".join(kept) or type(error).__name__
    extra = " ".join(" ".join(part.split()) for part in printed)
    return f"{text} (ITK: {extra})" if extra else text


def _read_raw(path: Path, voxels: bool = True) -> tuple[np.ndarray | None, Geometry]:
    """Array (3D, file voxel order) and geometry, without content checks. The header is
    read first: the dimensions and the memory budget (:func:`check_memory_budget`) are
    checked before the voxels are; without ``voxels`` they are not read (array None)."""
    extension = file_extension(path)
    shape: tuple[int, ...] = ()
    itk_output: list[str] = []
    try:
        if extension in NIFTI_EXTENSIONS:
            import nibabel as nib

            with _quiet_nibabel():
                image = nib.load(str(path))
                if not hasattr(image, "dataobj") or not hasattr(image, "affine"):
                    raise ValueError("not a NIfTI image")
                _check_nifti_zooms(path, image)
                shape = tuple(image.shape)
                _check_dimensions(path, shape)
                check_memory_budget(path, shape)
                array = np.asanyarray(image.dataobj) if voxels else None
                affine = np.asarray(image.affine, dtype=np.float64)
        else:
            import SimpleITK as sitk  # noqa: N813

            with _native_stderr(itk_output):
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.ReadImageInformation()
                components = reader.GetNumberOfComponents()
                if components != 1:
                    raise InputError(f"{path}: has {components} components per voxel, "
                                     "expected a scalar 3D image")
                shape = tuple(reader.GetSize())
                _check_dimensions(path, shape)
                check_memory_budget(path, shape)
                image = reader.Execute() if voxels else None
            if itk_output:  # what ITK printed on a read that worked goes where it went
                os.write(2, ("\n".join(itk_output) + "\n").encode())
            array = None
            if image is not None:
                array = sitk.GetArrayFromImage(image)
                array = array.transpose(tuple(range(array.ndim))[::-1])
            dimension = reader.GetDimension()
            origin = reader.GetOrigin()[:3]
            spacing = reader.GetSpacing()[:3]
            direction = np.asarray(reader.GetDirection()).reshape(dimension, dimension)[:3, :3]
            geometry = Geometry.from_itk(origin, spacing, direction.ravel(), (1, 1, 1))
            affine = geometry.affine
    except DDMRError:  # its own message: the file's problem, or a setting's (the budget)
        raise
    except MemoryError:
        raise InputError(
            f"{path}: not enough memory to read this image of {shape_text(shape)} voxels; "
            f"crop or downsample it first, or free memory") from None
    except Exception as error:  # nibabel/SimpleITK/zlib raise many kinds
        detail = (_itk_detail(error, itk_output) if extension in ITK_EXTENSIONS
                  else str(error).strip().splitlines()[0] if str(error).strip()
                  else type(error).__name__)
        raise InputError(f"{path}: cannot read image (truncated or corrupt?): {detail}") from None
    if array is None:
        return None, Geometry(affine, shape[:3])
    if array.ndim > 3:
        array = array.reshape(array.shape[:3])
    _check_dimensions(path, array.shape)
    return array, Geometry(affine, array.shape)


def load_image(path: PathLike, allow_constant: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read a 3D intensity image.

    Returns ``(array, geometry)``: float32 (I, J, K) in the file's voxel order, and its
    :class:`Geometry`. Raises :class:`InputError` for a missing, unreadable, non-3D,
    non-finite or (unless ``allow_constant``) constant image, or a bad voxel spacing.
    """
    path = _check_readable(path)
    array, geometry = _read_raw(path)
    check_geometry(geometry, path)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {array.dtype} is not numeric")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(f"{path}: image contains NaN or Inf voxels")
    largest = max(abs(float(array.max())), abs(float(array.min()))) if array.size else 0.0
    limit = float(np.finfo(np.float32).max)
    if largest > limit:
        raise InputError(f"{path}: image has values up to {largest:.3g}, beyond float32 (at "
                         f"most {limit:.3g}), which ddmr computes in; rescale its intensities")
    array = np.asarray(array, dtype=np.float32)
    if not allow_constant and (array.size == 0 or float(array.max()) == float(array.min())):
        raise InputError(f"{path}: image is constant (every voxel is {array.flat[0]:g})")
    return array, geometry


def load_geometry(path: PathLike) -> Geometry:
    """The grid of a 3D image from its header alone (its voxels are not read, so not
    checked): :class:`InputError` for a missing, unreadable or non-3D file or a bad
    voxel spacing, or one over the memory budget."""
    path = _check_readable(path)
    geometry = _read_raw(path, voxels=False)[1]
    check_geometry(geometry, path)
    return geometry


def load_labels(path: PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D label map: ``(uint8 (I, J, K), Geometry)``, 0 is background.

    Raises :class:`InputError` for the reasons of :func:`load_image` (except constancy),
    and for non-integer, negative or > 255 values.
    """
    path = _check_readable(path)
    array, geometry = _read_raw(path)
    check_geometry(geometry, path)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {array.dtype} is not numeric")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError(f"{path}: label map contains NaN or Inf voxels")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: label map has non-integer values")
    if array.size and float(array.min()) < 0:
        raise InputError(f"{path}: label map has negative values (min {array.min():g})")
    if array.size and float(array.max()) > 255:
        raise InputError(f"{path}: label values must be 0..255, found {array.max():g}")
    return np.asarray(array, dtype=np.uint8), geometry

#: Compression level of written .nii.gz files, in isal's igzip (levels 0-3; ordinary gzip
#: streams that every reader takes): 1 writes ~300 MB/s, several times zlib's fastest level.
GZIP_LEVEL = 1

#: Displacement fields are written rounded to this step in mm (at most 0.0005 mm off, a
#: two-thousandth of a 1 mm voxel): their last float bits are noise, and without them the
#: files shrink to about half (docs/outputs.md gives the sizes).
FIELD_STEP_MM = 2.0 ** -10


def _nifti_image(array: np.ndarray, geometry: Geometry,
                 prepare_header: Callable[[Any], None] | None = None):
    """A ``Nifti1Image`` of ``array`` on ``geometry`` with the header DDMR writes: qform and
    sform (code 1) from the affine, mm and seconds, then ``prepare_header(header)``."""
    import nibabel as nib

    image = nib.Nifti1Image(array, geometry.affine)
    image.header.set_qform(geometry.affine, code=1)
    image.header.set_sform(geometry.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if prepare_header is not None:
        prepare_header(image.header)
    return image


def _write_nifti(path: Path, array: np.ndarray, geometry: Geometry,
                 prepare_header: Callable[[Any], None] | None = None,
                 gzip_level: int = GZIP_LEVEL) -> None:
    import nibabel as nib
    from nibabel.fileholders import FileHolder

    image = _nifti_image(array, geometry, prepare_header)
    if not str(path).lower().endswith(".gz"):
        nib.save(image, str(path))
        return
    with open(path, "wb") as raw, _gzip_stream(raw, gzip_level) as handle:
        image.to_file_map({"image": FileHolder(fileobj=handle)})


def _gzip_stream(raw: BinaryIO, level: int) -> BinaryIO:
    """A gzip stream into the open file ``raw`` (isal's igzip), with no file name and no
    time in its header: the same data give the same bytes."""
    from isal import igzip

    return igzip.IGzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0)


def _write_nifti_volumes(path: Path, shape: tuple[int, ...], volumes: Iterable[np.ndarray],
                         geometry: Geometry,
                         prepare_header: Callable[[Any], None] | None = None,
                         gzip_level: int = GZIP_LEVEL) -> None:
    """:func:`_write_nifti` of a float32 array of ``shape`` (I, J, K, ...) given as its
    (I, J, K) volumes in file order (the last axes slowest), one at a time: the same
    bytes, without the whole array in memory."""
    import contextlib
    import io

    dummy = np.broadcast_to(np.zeros((), dtype=np.float32), shape)  # shape only, no data
    image = _nifti_image(dummy, geometry, prepare_header)
    image.update_header()
    header = image.header.copy()
    header.set_slope_inter(1.0, 0.0)  # what nibabel writes for float32 data
    block = io.BytesIO()
    header.write_to(block)  # the header and the empty extension flag
    compressed = str(path).lower().endswith(".gz")
    with open(path, "wb") as raw, (
            _gzip_stream(raw, gzip_level) if compressed else contextlib.nullcontext(raw)
    ) as handle:
        handle.write(block.getvalue().ljust(int(header["vox_offset"]), b"\0"))
        for volume in volumes:  # Fortran order: the first axis fastest
            handle.write(np.ascontiguousarray(volume.T, dtype=np.float32).data)


def _save_volume(path: PathLike, array: np.ndarray, geometry: Geometry,
                 gzip_level: int = GZIP_LEVEL) -> None:
    path = _check_writable(path)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {tuple(array.shape)} differs from grid {geometry.shape}")
    with atomic_path(path) as temporary:
        if file_extension(path) in NIFTI_EXTENSIONS:
            _write_nifti(temporary, array, geometry, gzip_level=gzip_level)
        else:
            _write_itk(temporary, array, geometry)


def _write_itk(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write a .nrrd/.mha with SimpleITK; a failure is one :class:`WriteError`. ITK words
    a full disk its own way (NRRD's gzip writer names no reason) and MetaIO prints on
    file descriptor 2 on its own: what it printed is folded into the message, and a
    failure on a device left without room for the raw volume is reported as the full
    disk it is."""
    import errno
    import shutil

    import SimpleITK as sitk  # noqa: N813

    from ddmr.errors import WriteError
    from ddmr.io.files import write_failure

    printed: list[str] = []
    try:
        with _native_stderr(printed):
            sitk.WriteImage(to_sitk(array, geometry), str(path), useCompression=True)
    except RuntimeError as error:
        detail = _itk_detail(error, printed)
        if shutil.disk_usage(path.parent).free < array.nbytes:
            detail = os.strerror(errno.ENOSPC)
        raise write_failure(RuntimeError(detail), path) or WriteError(path, detail) from None


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def save_image(path: PathLike, array: np.ndarray | torch.Tensor, geometry: Geometry,
               gzip_level: int = GZIP_LEVEL) -> None:
    """Write a float32 (I, J, K) image atomically (.nii.gz, .nii, .nrrd or .mha);
    ``gzip_level`` for .nii.gz."""
    array = _as_numpy(array).astype(np.float32, copy=False)
    _save_volume(path, array, geometry, gzip_level)


def save_labels(path: PathLike, array: np.ndarray | torch.Tensor, geometry: Geometry) -> None:
    """Write a uint8 (I, J, K) label map atomically; values must be integers 0..255."""
    array = _as_numpy(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must be 0..255, got {array.min()}..{array.max()}")
    _save_volume(path, np.rint(array).astype(np.uint8), geometry)
