"""Image and displacement-field I/O with geometry.

Conventions
-----------
* Arrays are in the file's voxel order: ``array[i, j, k]``; ddmr tensors
  (B, C, D, H, W) use D, H, W = i, j, k.
* :class:`Geometry` holds the nibabel-style affine that maps a voxel index (i, j, k) to
  RAS world coordinates in mm, and the grid shape. SimpleITK and ANTs describe the same
  grid with an LPS origin and direction; :meth:`Geometry.to_itk` /
  :meth:`Geometry.from_itk` convert.
* A ddmr displacement ``u`` (3, I, J, K) is in voxels of its grid, channels in (i, j, k)
  order, and pulls back: ``warped(x) = moving(x + u(x))``. On disk
  (:func:`save_displacement`) it is an ITK/ANTs displacement field: a NIfTI vector image
  (I, J, K, 1, 3), intent "vector" (1007), whose vectors are physical offsets in mm in
  LPS, ``d_LPS = diag(-1, -1, 1) @ affine[:3, :3] @ u``. ``antsApplyTransforms`` and
  ``SimpleITK.DisplacementFieldTransform`` read it as the transform that maps a point of
  the fixed (this) grid to the moving image, so applying it to the moving image gives
  the same warped image as ddmr (``tests/test_io.py`` proves it).

Every writer is atomic (temporary name in the same folder, then ``os.replace``), and every
reader validates its input, raising :class:`ddmr.errors.InputError` with one line that
names the file and the problem.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ddmr.errors import InputError, WriteError

try:
    import fcntl
except ImportError:  # not on Windows: outputs are then written without a lock
    fcntl = None

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike[str]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
ITK_EXTENSIONS = (".nrrd", ".nhdr", ".mha", ".mhd")
READ_EXTENSIONS = NIFTI_EXTENSIONS + ITK_EXTENSIONS
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")

#: RAS <-> LPS: flip the first two world axes.
LPS_FLIP = np.diag([-1.0, -1.0, 1.0])

#: Default tolerance (mm) when comparing two geometries' affines.
AFFINE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Geometry:
    """A voxel grid in world space.

    ``affine`` (4, 4) float64 maps a voxel index (i, j, k, 1) to RAS world mm (nibabel
    convention); ``shape`` is the grid size (I, J, K).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3:
            raise ValueError(f"shape must have 3 entries, got {shape}")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", shape)

    # -- derived quantities (RAS) ------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along i, j, k."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit column vectors of the i, j, k axes in RAS."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def origin(self) -> np.ndarray:
        """RAS world position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.shape == other.shape and np.array_equal(self.affine, other.affine)

    def __hash__(self) -> int:
        return hash((self.shape, self.affine.tobytes()))

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        return f"Geometry(shape={self.shape}, spacing=({spacing}))"

    def isclose(self, other: Geometry, tolerance: float = AFFINE_TOLERANCE) -> bool:
        """Same shape and affines equal within ``tolerance`` (mm, elementwise)."""
        return self.shape == other.shape and bool(
            np.max(np.abs(self.affine - other.affine)) <= tolerance
        )

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map voxel indices (..., 3) to RAS world points (..., 3) in mm."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map RAS world points (..., 3) in mm to (fractional) voxel indices (..., 3)."""
        inverse = np.linalg.inv(self.affine)
        points = np.asarray(points, dtype=np.float64)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def world_corners(self) -> np.ndarray:
        """(8, 3) RAS positions of the grid's outer corners (voxel edges, not centres)."""
        lo = np.full(3, -0.5)
        hi = np.asarray(self.shape, dtype=np.float64) - 0.5
        corners = np.array(
            [[(hi if b else lo)[a] for a, b in enumerate(bits)]
             for bits in np.ndindex(2, 2, 2)]
        )
        return self.index_to_world(corners)

    # -- ITK / ANTs (LPS) ----------------------------------------------------------------
    def to_itk(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """``(origin, spacing, direction)`` in ITK's LPS convention.

        ``direction`` is the row-major flattening of the (3, 3) matrix whose columns are
        the i, j, k axes in LPS, as ``SimpleITK.Image.SetDirection`` expects.
        """
        origin = LPS_FLIP @ self.affine[:3, 3]
        direction = LPS_FLIP @ self.direction
        return (tuple(float(v) for v in origin), self.spacing,
                tuple(float(v) for v in direction.ravel()))

    @classmethod
    def from_itk(cls, origin: Sequence[float], spacing: Sequence[float],
                 direction: Sequence[float], shape: Sequence[int]) -> Geometry:
        """Build from ITK's LPS ``origin``, ``spacing``, flat row-major ``direction`` and
        grid size (I, J, K)."""
        matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = LPS_FLIP @ matrix @ np.diag(np.asarray(spacing, dtype=np.float64))
        affine[:3, 3] = LPS_FLIP @ np.asarray(origin, dtype=np.float64)
        return cls(affine, tuple(int(n) for n in shape))

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"affine": self.affine.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        return cls(np.asarray(data["affine"], dtype=np.float64), tuple(data["shape"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Geometry:
        return cls.from_dict(json.loads(text))


def check_geometry(geometry: Geometry, path: PathLike) -> None:
    """Raise :class:`InputError` if the grid has non-finite or non-positive spacing."""
    if not np.all(np.isfinite(geometry.affine)):
        raise InputError(f"{path}: the affine (voxel-to-world matrix) has NaN or Inf entries")
    spacing = np.asarray(geometry.spacing)
    if np.any(spacing <= 0) or abs(np.linalg.det(geometry.affine[:3, :3])) <= 1e-12:
        raise InputError(
            f"{path}: voxel spacing must be positive, got "
            f"({', '.join(f'{s:g}' for s in spacing)}) mm"
        )
    if any(n < 1 for n in geometry.shape):
        raise InputError(f"{path}: empty image of shape {geometry.shape}")


def check_same_geometry(a: Geometry, b: Geometry, names: Sequence[PathLike],
                        tolerance: float = AFFINE_TOLERANCE) -> None:
    """Raise :class:`InputError` unless ``a`` and ``b`` are the same grid.

    ``names`` are the two files (image, labels); the message names the second.
    Affines may differ elementwise by ``tolerance`` (mm).
    """
    first, second = (str(n) for n in names)
    if a.shape != b.shape:
        raise InputError(
            f"{second}: shape {b.shape} differs from {first} shape {a.shape}"
        )
    difference = float(np.max(np.abs(a.affine - b.affine)))
    if not difference <= tolerance:
        raise InputError(
            f"{second}: voxel-to-world affine differs from {first} "
            f"(largest difference {difference:.3g} mm)"
        )


# --------------------------------------------------------------------------------------
# Paths and atomic writes
# --------------------------------------------------------------------------------------


def file_extension(path: PathLike) -> str:
    """The lower-case image extension of ``path`` (``.nii.gz`` counts as one)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def strip_extension(path: PathLike) -> str:
    """File name without its image extension: ``a/b.nii.gz -> b``."""
    name = Path(path).name
    extension = file_extension(name)
    return name[: len(name) - len(extension)] if extension else name


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


#: errno values that mean "this place cannot be written": full disk or quota, read-only
#: file system, no permission, file too large, an I/O error of the device
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EFBIG, errno.EIO})

#: how libraries that do not raise OSError (HDF5, torch.save, ITK) word the same failures
_WRITE_FAILURE_TEXTS = {"no space left on device": errno.ENOSPC, "errno = 28": errno.ENOSPC,
                        "disk quota exceeded": errno.EDQUOT,
                        "read-only file system": errno.EROFS,
                        "permission denied": errno.EACCES}


def write_failure(error: BaseException, path: PathLike) -> WriteError | None:
    """The one-line :class:`ddmr.errors.WriteError` naming the output ``path`` for an
    exception raised while writing it when it is the device's or the folder's fault (full
    disk, read-only, no permission); None for any other exception. A ``WriteError`` of
    an output inside ``path`` is named for ``path``."""
    if isinstance(error, WriteError):
        return error.naming(path)
    number = error.errno if isinstance(error, OSError) else None
    if number not in WRITE_ERRNOS:
        text = str(error).lower()
        number = next((n for key, n in _WRITE_FAILURE_TEXTS.items() if key in text), None)
        if number is None or not isinstance(error, OSError | RuntimeError):
            return None
    return WriteError(path, os.strerror(number))


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); on success it replaces
    ``path`` atomically, on failure it is removed, leaving any old file untouched. A full
    disk, a read-only folder or a missing permission becomes one :class:`InputError`."""
    path = Path(path)
    extension = file_extension(path)
    stem = path.name[: len(path.name) - len(extension)] if extension else path.name
    temporary = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{extension}")
    try:
        yield temporary
        os.replace(temporary, path)
    except (OSError, RuntimeError, WriteError) as error:
        failure = write_failure(error, path)
        if failure is None:
            raise
        raise failure from None
    finally:
        if temporary.exists():
            temporary.unlink()


def _lock_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextmanager
def output_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (a ``.NAME.lock`` file beside it,
    locked with ``flock``, which the kernel releases when a process dies, and removed
    after); :class:`InputError` at once when another process holds it."""
    path = Path(path)
    lock = _lock_name(path)
    while True:
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise (write_failure(error, path) or error) from None
        try:
            if fcntl is not None:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise InputError(f"{path}: another ddmr process is writing this output now "
                             "(wait for it, or choose another output)") from None
        # the holder before us may have removed the file after we opened it: lock anew
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(descriptor)


def _occupied(path: Path) -> bool:
    """True when ``path`` exists and is not an empty folder."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextmanager
def atomic_directory(path: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it replaces ``path`` (an
    old folder is moved aside and removed only once the new one is in place), on failure
    it is removed and ``path`` is left as it was.

    The output is locked (:func:`output_lock`) from entry to exit, so of two processes
    writing the same ``path`` at once the second stops with :class:`InputError`. Without
    ``overwrite``, an existing ``path`` (other than an empty folder) is refused, on entry
    and again when the new folder is put in place (another process may have written it
    meanwhile). A full disk, a read-only folder or a missing permission while writing
    becomes one :class:`InputError` naming the path.
    """
    path = Path(path)
    check_output_folder(path, overwrite=overwrite, allow_empty=True, probe=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise (write_failure(error, path) or error) from None
    with output_lock(path):
        if not overwrite and _occupied(path):
            raise InputError(f"{path}: output folder already exists (written by another "
                             "process meanwhile?); pass --overwrite to replace it")
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            temporary.mkdir()
            yield temporary
            old = None
            if path.exists():
                if not overwrite and _occupied(path):
                    raise InputError(f"{path}: output folder already exists (written by "
                                     "another process meanwhile); pass --overwrite to "
                                     "replace it")
                old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(path, old)
            try:
                os.replace(temporary, path)
            except BaseException:
                if old is not None:
                    os.replace(old, path)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except (OSError, RuntimeError, WriteError) as error:
            failure = write_failure(error, path)
            if failure is None:
                raise
            raise failure from None
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)


#: bytes written (and synced) by the writability probe of :func:`check_output_folder`
PROBE_BYTES = 4096


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (``InputError`` if it is a file)."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{path}: cannot create it: {ancestor} is a file, not a folder")
    return ancestor


def _probe_writable(folder: Path, path: Path) -> None:
    """Write and sync a small hidden file in ``folder`` (then remove it): refuses a
    read-only file system, a folder without write permission and a full disk, before any
    work is done."""
    probe = folder / f".{path.name}.probe-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "xb") as handle:
            try:
                handle.write(b"\0" * PROBE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                probe.unlink()
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise InputError(f"{path}: cannot write into {folder}: {reason}") from None


def check_free_space(path: PathLike, needed_bytes: int, what: str = "the output") -> None:
    """Raise :class:`InputError` unless the device holding ``path`` (or its nearest
    existing folder) has ``needed_bytes`` free."""
    path = Path(path)
    folder = path if path.is_dir() else _existing_ancestor(path)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise InputError(f"{path}: not enough free space for {what}: about "
                         f"{needed_bytes / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free on "
                         f"the device of {folder}")


def check_output_folder(path: PathLike, overwrite: bool = False, allow_empty: bool = False,
                        needed_bytes: int = 0, probe: bool = True) -> Path:
    """Check, before any work, that the output folder ``path`` can be written; returns it.

    Raises :class:`InputError` when ``path`` exists and is not a folder; exists without
    ``overwrite`` (an empty folder passes with ``allow_empty``); would be created below a
    file; or (``probe``) its folder is read-only, not writable, or on a device without
    ``needed_bytes`` (and a small probe file) free.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a folder")
    exists = _occupied(path) if allow_empty else path.exists()
    if exists and not overwrite:
        raise InputError(f"{path}: output folder already exists (pass --overwrite to replace)")
    ancestor = _existing_ancestor(path)
    if probe:
        _probe_writable(ancestor, path)
        if needed_bytes > 0:
            check_free_space(path, needed_bytes)
    return path


def check_output_file(path: PathLike, overwrite: bool = False) -> Path:
    """Check, before any work, that the output file ``path`` can be written (its folder
    exists and is writable; an existing file only with ``overwrite``); returns it."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file name")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists (pass --overwrite to replace)")
    folder = path.absolute().parent
    if not folder.is_dir():
        _existing_ancestor(path)  # a file above it is named as such
        raise InputError(f"{path}: folder {path.parent} does not exist")
    _probe_writable(folder, path)
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


# --------------------------------------------------------------------------------------
# SimpleITK / ANTs conversions
# --------------------------------------------------------------------------------------


def to_sitk(array: np.ndarray, geometry: Geometry):
    """A ``SimpleITK.Image`` of a scalar (I, J, K) array on ``geometry``."""
    import SimpleITK as sitk  # noqa: N813

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def from_sitk(image) -> tuple[np.ndarray, Geometry]:
    """(array (I, J, K), Geometry) of a scalar 3D ``SimpleITK.Image``."""
    import SimpleITK as sitk  # noqa: N813

    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    geometry = Geometry.from_itk(image.GetOrigin(), image.GetSpacing(),
                                 image.GetDirection(), image.GetSize())
    return array, geometry


def to_ants(array: np.ndarray, geometry: Geometry):
    """An ``ants.ANTsImage`` of a scalar (I, J, K) array on ``geometry`` (float32)."""
    import ants

    origin, spacing, direction = geometry.to_itk()
    return ants.from_numpy(
        np.ascontiguousarray(np.asarray(array, dtype=np.float32)),
        origin=origin, spacing=spacing, direction=np.asarray(direction).reshape(3, 3),
    )


def from_ants(image) -> tuple[np.ndarray, Geometry]:
    """(array (I, J, K), Geometry) of a scalar 3D ``ants.ANTsImage``."""
    array = image.numpy()
    geometry = Geometry.from_itk(image.origin, image.spacing,
                                 np.asarray(image.direction).ravel(), array.shape)
    return array, geometry


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


#: Environment variable: the most memory (MB) that one input image may take as float32.
MEMORY_BUDGET_ENV = "DDMR_MAX_IMAGE_MB"

#: Without :data:`MEMORY_BUDGET_ENV`, one image may take this fraction of physical memory.
MEMORY_BUDGET_FRACTION = 1 / 8

#: Without :data:`MEMORY_BUDGET_ENV` and where physical memory cannot be read: 2 GiB.
MEMORY_BUDGET_FALLBACK = 2 << 30


def memory_budget() -> int:
    """The most bytes one input image may take in memory as float32.

    ``DDMR_MAX_IMAGE_MB`` sets it (in MB); otherwise it is 1/8 of the machine's physical
    memory: registration and preparation hold several float copies of an image (and a
    3-channel field on its grid), so an image above this would exhaust memory mid-way.
    """
    from ddmr.errors import ConfigError

    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if text:
        try:
            megabytes = float(text)
        except ValueError:
            megabytes = float("nan")
        if not np.isfinite(megabytes) or megabytes <= 0:
            raise ConfigError(f"{MEMORY_BUDGET_ENV}={text!r}: expected a positive number of MB")
        return int(megabytes * 1e6)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MEMORY_BUDGET_FALLBACK
    return int(physical * MEMORY_BUDGET_FRACTION) if physical > 0 else MEMORY_BUDGET_FALLBACK


#: cgroup (v2, v1) files holding this container's memory limit and current use
_CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                   "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def available_memory() -> int:
    """Bytes this process can still allocate: the system's ``MemAvailable`` (physical
    memory where /proc/meminfo cannot be read), capped by a cgroup (container) limit less
    its current use. For refusing a request before allocating it, not for budgeting."""
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            available = MEMORY_BUDGET_FALLBACK
    for limit_file, usage_file in _CGROUP_MEMORY:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            available = min(available, max(int(limit) - usage, 0))
    return available


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


def check_memory_budget(path: PathLike, shape: Sequence[int]) -> None:
    """Raise :class:`InputError` if an image of ``shape`` voxels would take more than
    :func:`memory_budget` bytes as float32; the message says what to do."""
    needed = 4 * int(np.prod([int(n) for n in shape], dtype=np.float64))
    budget = memory_budget()
    if needed > budget:
        source = (f"{MEMORY_BUDGET_ENV}={os.environ[MEMORY_BUDGET_ENV].strip()}"
                  if os.environ.get(MEMORY_BUDGET_ENV, "").strip()
                  else "1/8 of this machine's memory")
        raise InputError(
            f"{path}: image of {_shape_text(shape)} voxels needs {needed / 1e6:.1f} MB as "
            f"float32, over the memory budget of {budget / 1e6:.1f} MB ({source}); crop or "
            f"downsample it first, or set {MEMORY_BUDGET_ENV} to a larger number of MB"
        )


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


def _read_raw(path: Path) -> tuple[np.ndarray, Geometry]:
    """Array (3D, file voxel order) and geometry, without content checks. The header is
    read first: the dimensions and the memory budget (:func:`check_memory_budget`) are
    checked before the voxels are."""
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
                array = np.asanyarray(image.dataobj)
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
                image = reader.Execute()
            if itk_output:  # what ITK printed on a read that worked goes where it went
                os.write(2, ("\n".join(itk_output) + "\n").encode())
            array = sitk.GetArrayFromImage(image)
            array = array.transpose(tuple(range(array.ndim))[::-1])
            dimension = image.GetDimension()
            origin = image.GetOrigin()[:3]
            spacing = image.GetSpacing()[:3]
            direction = np.asarray(image.GetDirection()).reshape(dimension, dimension)[:3, :3]
            geometry = Geometry.from_itk(origin, spacing, direction.ravel(), (1, 1, 1))
            affine = geometry.affine
    except InputError:
        raise
    except MemoryError:
        raise InputError(
            f"{path}: not enough memory to read this image of {_shape_text(shape)} voxels; "
            f"crop or downsample it first, or free memory") from None
    except Exception as error:  # nibabel/SimpleITK/zlib raise many kinds
        detail = (_itk_detail(error, itk_output) if extension in ITK_EXTENSIONS
                  else str(error).strip().splitlines()[0] if str(error).strip()
                  else type(error).__name__)
        raise InputError(f"{path}: cannot read image (truncated or corrupt?): {detail}") from None
    if array.ndim > 3:
        array = array.reshape(array.shape[:3])
    _check_dimensions(path, array.shape)
    return array, Geometry(affine, array.shape)


def load_image(path: PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a 3D intensity image.

    Returns ``(array, geometry)``: float32 (I, J, K) in the file's voxel order, and its
    :class:`Geometry`. Raises :class:`InputError` for a missing, unreadable, non-3D,
    non-finite or constant image, or a bad voxel spacing.
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
    if array.size == 0 or float(array.max()) == float(array.min()):
        raise InputError(f"{path}: image is constant (every voxel is {array.flat[0]:g})")
    return array, geometry


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


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


#: gzip level of written .nii.gz files: 1 (fast) for images and labels; 0 (a gzip
#: container without compression) for float fields such as displacements and Jacobians,
#: whose noise-like bits shrink by ~12 % at ten times the writing time.
GZIP_LEVEL = 1
GZIP_LEVEL_FIELDS = 0


def _write_nifti(path: Path, array: np.ndarray, geometry: Geometry,
                 prepare_header: Callable[[Any], None] | None = None,
                 gzip_level: int = GZIP_LEVEL) -> None:
    import gzip

    import nibabel as nib
    from nibabel.fileholders import FileHolder

    image = nib.Nifti1Image(array, geometry.affine)
    image.header.set_qform(geometry.affine, code=1)
    image.header.set_sform(geometry.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if prepare_header is not None:
        prepare_header(image.header)
    if not str(path).lower().endswith(".gz"):
        nib.save(image, str(path))
        return
    # no file name and no time in the gzip header: the same data give the same bytes
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                compresslevel=gzip_level, mtime=0) as handle:
        image.to_file_map({"image": FileHolder(fileobj=handle)})


def _save_volume(path: PathLike, array: np.ndarray, geometry: Geometry,
                 gzip_level: int = GZIP_LEVEL) -> None:
    path = _check_writable(path)
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {tuple(array.shape)} differs from grid {geometry.shape}")
    with atomic_path(path) as temporary:
        if file_extension(path) in NIFTI_EXTENSIONS:
            _write_nifti(temporary, array, geometry, gzip_level=gzip_level)
        else:
            import SimpleITK as sitk  # noqa: N813

            sitk.WriteImage(to_sitk(array, geometry), str(temporary), useCompression=True)


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def save_image(path: PathLike, array: np.ndarray | torch.Tensor, geometry: Geometry,
               gzip_level: int = GZIP_LEVEL) -> None:
    """Write a float32 (I, J, K) image atomically (.nii.gz, .nii, .nrrd or .mha);
    ``gzip_level`` for .nii.gz (:data:`GZIP_LEVEL_FIELDS` for noise-like float maps)."""
    array = _as_numpy(array).astype(np.float32, copy=False)
    _save_volume(path, array, geometry, gzip_level)


def save_labels(path: PathLike, array: np.ndarray | torch.Tensor, geometry: Geometry) -> None:
    """Write a uint8 (I, J, K) label map atomically; values must be integers 0..255."""
    array = _as_numpy(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"label values must be 0..255, got {array.min()}..{array.max()}")
    _save_volume(path, np.rint(array).astype(np.uint8), geometry)


# --------------------------------------------------------------------------------------
# Displacement fields
# --------------------------------------------------------------------------------------


def displacement_to_lps_mm(displacement_vox: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Voxel displacement (3, I, J, K) -> physical LPS vectors in mm (I, J, K, 3)."""
    matrix = LPS_FLIP @ geometry.affine[:3, :3]
    return np.einsum("ab,bijk->ijka", matrix, displacement_vox.astype(np.float64))


def lps_mm_to_displacement(vectors_lps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Physical LPS vectors in mm (I, J, K, 3) -> voxel displacement (3, I, J, K)."""
    matrix = np.linalg.inv(LPS_FLIP @ geometry.affine[:3, :3])
    return np.einsum("ab,ijkb->aijk", matrix, vectors_lps.astype(np.float64))


def save_displacement(path: PathLike, displacement_vox: np.ndarray | torch.Tensor,
                      geometry: Geometry) -> None:
    """Write a ddmr voxel displacement as an ITK/ANTs displacement field (atomic).

    ``displacement_vox`` is (3, I, J, K) (or (1, 3, I, J, K)) in voxels of ``geometry``,
    channels (i, j, k), pull-back. The file is a NIfTI vector image (I, J, K, 1, 3),
    intent 1007, holding LPS offsets in mm; see the module docstring.
    """
    array = _as_numpy(displacement_vox)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (3, *geometry.shape):
        raise ValueError(
            f"displacement must be (3, {', '.join(map(str, geometry.shape))}), "
            f"got {tuple(array.shape)}"
        )
    path = Path(path)
    if file_extension(path) not in NIFTI_EXTENSIONS:
        raise InputError(f"{path}: displacement fields are written as .nii.gz or .nii")
    _check_writable(path)
    vectors = displacement_to_lps_mm(array, geometry).astype(np.float32)
    vectors = vectors.reshape(*geometry.shape, 1, 3)

    def vector_intent(header) -> None:
        header.set_intent("vector", (), "")

    with atomic_path(path) as temporary:
        _write_nifti(temporary, vectors, geometry, vector_intent, GZIP_LEVEL_FIELDS)


def load_displacement(path: PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an ITK/ANTs displacement field: ``(displacement_vox (3, I, J, K) float32,
    Geometry)``, the inverse of :func:`save_displacement` (also reads fields that ANTs
    wrote, and .nrrd/.mha vector images)."""
    path = _check_readable(path)
    extension = file_extension(path)
    try:
        if extension in NIFTI_EXTENSIONS:
            import nibabel as nib

            with _quiet_nibabel():
                image = nib.load(str(path))
                data = np.asanyarray(image.dataobj)
            geometry = Geometry(np.asarray(image.affine, dtype=np.float64), data.shape[:3])
        else:
            import SimpleITK as sitk  # noqa: N813

            image = sitk.ReadImage(str(path))
            data = sitk.GetArrayFromImage(image)  # (K, J, I, 3)
            data = data.transpose(2, 1, 0, *range(3, data.ndim))
            geometry = Geometry.from_itk(image.GetOrigin(), image.GetSpacing(),
                                         image.GetDirection(), image.GetSize())
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: cannot read displacement field: {detail}") from None
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        raise InputError(
            f"{path}: shape {tuple(data.shape)} is not a 3D displacement field (I, J, K, 1, 3)"
        )
    check_geometry(geometry, path)
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: displacement field contains NaN or Inf")
    return lps_mm_to_displacement(data, geometry).astype(np.float32), geometry


# --------------------------------------------------------------------------------------
# World-space resampling
# --------------------------------------------------------------------------------------


#: Edge padding (voxels) around an image before its spline coefficients are computed,
#: as scipy does for ``mode="nearest"``.
SPLINE_PAD = 12


@dataclass(frozen=True, eq=False)
class SplineSource:
    """An image prepared once for repeated spline resampling in world space (e.g. the
    moving image, resampled before and after an affine pre-alignment).

    coefficients: B-spline coefficients of the image (after anti-aliasing), edge-padded
        by :data:`SPLINE_PAD` voxels on every side; float32 (relative error ~1e-7 against
        scipy's float64, at 60 % of the time).
    sigma: the anti-aliasing Gaussian applied first (source voxels, per axis).
    geometry: the image's grid; ``low``/``high``: its value range (results are clipped
        to it, no spline overshoot); ``order``: spline order (2-5).
    """

    coefficients: np.ndarray
    geometry: Geometry
    low: float
    high: float
    order: int
    sigma: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _index_map(geometry_from: Geometry, geometry_to: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(3, 3) matrix and (3,) offset with ``index_from = matrix @ index_to + offset``."""
    transform = np.linalg.inv(geometry_from.affine) @ geometry_to.affine
    return transform[:3, :3], transform[:3, 3]


def antialias_sigma(geometry_from: Geometry, geometry_to: Geometry) -> np.ndarray:
    """Gaussian sigma (3,) in source voxels that suppresses aliasing when resampling from
    ``geometry_from`` onto the coarser ``geometry_to``: half of (output step - 1), the
    output step measured in source voxels along each source axis."""
    matrix, _ = _index_map(geometry_from, geometry_to)
    return np.maximum(np.linalg.norm(matrix, axis=1) - 1.0, 0.0) / 2.0


def _workers() -> int:
    """Threads for scipy.ndimage work (its filters and interpolation release the GIL):
    :func:`ddmr.threads.workers`, at most 4."""
    from ddmr.threads import workers

    return max(1, min(4, workers()))


def _in_slabs(shape: tuple[int, ...], axis: int, job: Callable[[tuple[slice, ...]], None]
              ) -> None:
    """Run ``job(index)`` on slabs of ``shape`` cut along ``axis``, one per thread."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(_workers(), shape[axis])
    bounds = np.linspace(0, shape[axis], workers + 1).astype(int)
    slabs = []
    for start, stop in itertools.pairwise(bounds):
        index = [slice(None)] * len(shape)
        index[axis] = slice(int(start), int(stop))
        slabs.append(tuple(index))
    if workers == 1:
        job(slabs[0])
        return
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(job, index) for index in slabs]:
            done.result()


def _filter_axes(array: np.ndarray, dtype: type, apply: Callable[[np.ndarray, int], np.ndarray],
                 axes: Sequence[int]) -> np.ndarray:
    """``apply(volume, axis)`` (a 1D filter along ``axis``) for each of ``axes`` in turn,
    each pass on threads that split the volume along another axis; ``dtype`` output."""
    result = np.asarray(array, dtype=dtype)
    for axis in axes:
        source, out = result, np.empty(result.shape, dtype=dtype)

        def job(index: tuple[slice, ...], source=source, out=out, axis=axis) -> None:
            out[index] = apply(source[index], axis)

        _in_slabs(source.shape, 1 if axis == 0 else 0, job)
        result = out
    return result


def _axis_sigmas(sigma: np.ndarray | None) -> list[float | None]:
    """Per axis, the Gaussian (source voxels) that smoothing by ``sigma`` applies: none at
    all unless some axis exceeds 0.1 voxel, and none along axes of (near) zero sigma."""
    if sigma is None or not np.any(np.asarray(sigma) > 0.1):
        return [None, None, None]
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,))
    return [float(value) if value > 1e-15 else None for value in sigmas]


def applied_sigma(sigma: np.ndarray | None) -> tuple[float, float, float]:
    """The anti-aliasing (3,) that :func:`spline_source` records for ``sigma`` (zeros
    where it smooths nothing)."""
    a, b, c = (0.0 if value is None else value for value in _axis_sigmas(sigma))
    return a, b, c


def _smoothed(array: np.ndarray, sigma: np.ndarray | None
              ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array`` as float32, smoothed by the Gaussian ``sigma`` (source voxels, per axis;
    skipped when no axis exceeds 0.1) on threads, and the sigma applied (zeros if none).
    The numbers of ``scipy.ndimage.gaussian_filter(..., mode="nearest")``."""
    from scipy import ndimage

    source = np.asarray(array, dtype=np.float32)
    sigmas = _axis_sigmas(sigma)
    axes = [axis for axis in range(3) if sigmas[axis] is not None]
    if axes:
        source = _filter_axes(
            source, np.float32, lambda volume, axis: ndimage.gaussian_filter1d(
                volume, sigmas[axis], axis=axis, mode="nearest"), axes)
    return source, applied_sigma(sigma)


def spline_source(array: np.ndarray, geometry: Geometry, order: int = 3,
                  sigma: np.ndarray | None = None) -> SplineSource:
    """Smooth ``array`` (I, J, K) by ``sigma`` (source voxels; skipped when all <= 0.1)
    and compute its B-spline coefficients: a :class:`SplineSource`. The numbers of
    ``scipy.ndimage.gaussian_filter`` / ``spline_filter`` (axis by axis; coefficients in
    float32), on threads."""
    from scipy import ndimage

    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} differs from grid {geometry.shape}")
    if not 2 <= order <= 5:
        raise ValueError(f"spline order must be 2..5, got {order}")
    if max(array.shape) <= DENSE_FILTER_LIMIT:  # the same filters as matrices
        sigmas = _axis_sigmas(sigma)
        coefficients = _separable(np.asarray(array, dtype=np.float32), [
            _axis_coefficients(size, order, sigmas[axis]).astype(np.float32)
            for axis, size in enumerate(array.shape)])
        return SplineSource(coefficients, geometry, float(array.min()), float(array.max()),
                            order, applied_sigma(sigma))
    source, applied = _smoothed(array, sigma)
    padded = np.pad(source, SPLINE_PAD, mode="edge")
    coefficients = _filter_axes(
        padded, np.float32, lambda volume, axis: ndimage.spline_filter1d(
            volume, order, axis=axis, output=np.float32, mode="nearest"), range(3))
    return SplineSource(coefficients, geometry, float(array.min()), float(array.max()), order,
                        applied)


def _inside(geometry_from: Geometry, geometry_to: Geometry) -> np.ndarray:
    """(geometry_to.shape) bool: output voxels whose source index lies within half a voxel
    of the source grid (voxel edges, not centres; 1e-4 voxel of tolerance)."""
    matrix, offset = _index_map(geometry_from, geometry_to)
    inside = np.ones(geometry_to.shape, dtype=bool)
    axes = [np.arange(n, dtype=np.float64) for n in geometry_to.shape]
    for row, size in enumerate(geometry_from.shape):
        value = (offset[row] + matrix[row, 0] * axes[0][:, None, None]
                 + matrix[row, 1] * axes[1][None, :, None]
                 + matrix[row, 2] * axes[2][None, None, :])
        inside &= (value >= -0.5 - 1e-4) & (value <= size - 0.5 + 1e-4)
    return inside


def resample_spline(source: SplineSource, geometry_to: Geometry, cval: float = 0.0
                    ) -> np.ndarray:
    """Resample a :class:`SplineSource` onto ``geometry_to`` (world space): float32 array
    of ``geometry_to.shape``, clipped to the source's range, ``cval`` outside it."""
    from scipy import ndimage

    matrix, offset = _index_map(source.geometry, geometry_to)
    output = np.empty(geometry_to.shape, dtype=np.float32)

    def job(index: tuple[slice, ...]) -> None:
        rows = index[0]
        ndimage.affine_transform(
            source.coefficients, matrix, offset + SPLINE_PAD + matrix[:, 0] * rows.start,
            output_shape=output[index].shape, output=output[index], order=source.order,
            mode="nearest", prefilter=False)

    _in_slabs(geometry_to.shape, 0, job)
    output = np.clip(output, source.low, source.high)
    output[~_inside(source.geometry, geometry_to)] = cval
    return output


#: Largest axis (voxels) for which :func:`spline_source` and
#: :func:`resample_axis_aligned` use three dense matrix products rather than scipy's
#: recursive filters: the products cost about ``size`` operations per voxel per axis, yet
#: on 2 cores they were 1.3-4x faster than the filters from 96^3 to 320 x 320 x 200.
DENSE_FILTER_LIMIT = 320


def _axis_coefficients(size: int, order: int, sigma: float | None) -> np.ndarray:
    """(size + 2 SPLINE_PAD, size) float64 matrix of :func:`spline_source` along one axis:
    Gaussian ``sigma`` (``None``: none), edge padding, B-spline prefilter. Built by running
    the same scipy filters on the identity, so the numbers are theirs."""
    from scipy import ndimage

    operator = np.eye(size)
    if sigma is not None:
        operator = ndimage.gaussian_filter1d(operator, sigma, axis=0, mode="nearest")
    operator = np.pad(operator, ((SPLINE_PAD, SPLINE_PAD), (0, 0)), mode="edge")
    return ndimage.spline_filter1d(operator, order, axis=0, mode="nearest")


def _axis_operator(size: int, positions: np.ndarray, order: int, sigma: float | None
                   ) -> np.ndarray:
    """(m, size) float64 matrix of :func:`spline_source` then :func:`resample_spline`
    along one axis: :func:`_axis_coefficients` evaluated at the source ``positions``."""
    from scipy import ndimage

    coefficients = _axis_coefficients(size, order, sigma)
    where = [np.asarray(positions, dtype=np.float64) + SPLINE_PAD]
    return np.stack([ndimage.map_coordinates(coefficients[:, column], where, order=order,
                                             mode="nearest", prefilter=False)
                     for column in range(size)], axis=1)


def _separable(volume: np.ndarray, operators: Sequence[np.ndarray]) -> np.ndarray:
    """``volume`` (I, J, K) float32 with matrix ``operators[a]`` (n_a, size_a) applied
    along each axis a: (n_0, n_1, n_2) float32."""
    size_i, size_j, size_k = volume.shape
    out = (operators[0] @ volume.reshape(size_i, size_j * size_k)).reshape(-1, size_j, size_k)
    return np.ascontiguousarray(np.matmul(np.matmul(operators[1], out), operators[2].T))


def resample_axis_aligned(array: np.ndarray, geometry_from: Geometry, geometry_to: Geometry,
                          order: int = 3, sigma: np.ndarray | None = None, cval: float = 0.0
                          ) -> np.ndarray | None:
    """``resample_spline(spline_source(array, geometry_from, order, sigma), geometry_to,
    cval)`` as three matrix products, when each axis of ``geometry_to`` runs along the
    same axis of ``geometry_from`` (any scale, offset or flip; e.g. the network's grid
    made from the fixed image) and no source axis exceeds :data:`DENSE_FILTER_LIMIT`;
    ``None`` otherwise. Float32 (I', J', K')."""
    if max(geometry_from.shape) > DENSE_FILTER_LIMIT:
        return None
    matrix, offset = _index_map(geometry_from, geometry_to)
    diagonal = np.diag(matrix)
    if not np.allclose(matrix, np.diag(diagonal), rtol=0.0, atol=1e-9 * np.abs(matrix).max()) \
            or np.any(diagonal == 0):
        return None
    if tuple(array.shape) != geometry_from.shape:
        raise ValueError(f"array shape {array.shape} differs from grid {geometry_from.shape}")
    sigmas = _axis_sigmas(sigma)
    operators = [_axis_operator(
        geometry_from.shape[axis], diagonal[axis] * np.arange(geometry_to.shape[axis])
        + offset[axis], order, sigmas[axis]).astype(np.float32) for axis in range(3)]
    volume = np.asarray(array, dtype=np.float32)
    out = np.clip(_separable(volume, operators), float(volume.min()), float(volume.max()))
    out[~_inside(geometry_from, geometry_to)] = cval
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_to(array: np.ndarray, geometry_from: Geometry, geometry_to: Geometry,
                order: int = 3, cval: float = 0.0, antialias: bool = False) -> np.ndarray:
    """Resample ``array`` (I, J, K) from ``geometry_from`` onto ``geometry_to`` in world
    space (scipy spline interpolation through the two affines).

    ``order`` 3 (cubic B-spline) suits images, 0 (nearest) label maps. Points outside the
    source grid (beyond half a voxel from it) take ``cval``. For ``order > 1`` the result
    is clipped to the input's range (no spline overshoot). ``antialias`` first smooths
    with a Gaussian along the axes that get coarser (:func:`antialias_sigma`). Returns an
    array of ``geometry_to.shape`` and the input dtype for ``order == 0``, float32
    otherwise.
    """
    from scipy import ndimage

    if tuple(array.shape) != geometry_from.shape:
        raise ValueError(f"array shape {array.shape} differs from grid {geometry_from.shape}")
    if order > 1:
        sigma = antialias_sigma(geometry_from, geometry_to) if antialias else None
        fast = resample_axis_aligned(array, geometry_from, geometry_to, order, sigma, cval)
        if fast is not None:
            return fast
        return resample_spline(spline_source(array, geometry_from, order, sigma),
                               geometry_to, cval)
    matrix, offset = _index_map(geometry_from, geometry_to)
    source = array
    if order == 1:
        source, _ = _smoothed(array, antialias_sigma(geometry_from, geometry_to)
                              if antialias else None)
    output = ndimage.affine_transform(source, matrix, offset, output_shape=geometry_to.shape,
                                      order=order, mode="nearest")
    output[~_inside(geometry_from, geometry_to)] = cval
    return output
