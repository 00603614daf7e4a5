"""Writing files safely: temporary names renamed into place, output folders locked and
checked before the work, and full or read-only disks reported in one line.

Every writer of ddmr writes under a temporary name in the same folder and renames it
into place (:func:`atomic_path`, :func:`atomic_directory`), so an interrupted or failed
write leaves the old output untouched and nothing half-written. Every CSV that ddmr
reads is read by :func:`read_csv` (UTF-8, with or without a byte-order mark).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddmr.errors import InputError, WriteError

if TYPE_CHECKING:
    pass

PathLike = str | os.PathLike[str]

try:
    import fcntl
except ImportError:  # not on Windows: outputs are then written without a lock
    fcntl = None


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
def write_errors(path: PathLike) -> Iterator[None]:
    """Inside, a failure to write ``path`` that is the device's or the folder's fault
    (:func:`write_failure`) becomes one :class:`ddmr.errors.WriteError` naming it; any
    other exception passes unchanged."""
    try:
        yield
    except (OSError, RuntimeError, WriteError) as error:
        failure = write_failure(error, path)
        if failure is None:
            raise
        raise failure from None


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.XXXXXXXX.tmp`` + its extension)
    for the caller to write; on success it is synced to disk and replaces ``path``
    atomically, so a kill or a power cut at any moment leaves the old file or the new
    one; on failure it is removed, leaving any old file untouched. A full disk, a
    read-only folder or a missing permission becomes one :class:`WriteError`. This is
    how every file of ddmr is written."""
    path = Path(path)
    extension = file_extension(path)
    stem = path.name[: len(path.name) - len(extension)] if extension else path.name
    temporary = path.with_name(f".{stem}.{uuid.uuid4().hex[:8]}.tmp{extension}")
    try:
        with write_errors(path):
            yield temporary
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
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
        with write_errors(path):
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
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
    with write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):
        if not overwrite and _occupied(path):
            raise InputError(f"{path}: output folder already exists (written by another "
                             "process meanwhile?); pass --overwrite to replace it")
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with write_errors(path):
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


def read_csv(path: PathLike) -> list[list[str]]:
    """The rows of the CSV file ``path``, each a list of its cells as written. The text
    is UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8" writes (it is
    not part of the first cell). Every CSV that ddmr reads is read through this.
    :class:`InputError` for a file that cannot be read, is not UTF-8 (naming the byte and
    its offset) or is not a CSV."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} "
                         f"at offset {error.start})") from None
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise InputError(f"{path}: cannot read: {reason}") from None
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise InputError(f"{path}: not a readable CSV ({error})") from None


def read_csv_records(path: PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """The header (names stripped of spaces) and the rows of the CSV file ``path`` as
    mappings of those names to the cells (stripped; ``""`` for a cell the row lacks), read
    with :func:`read_csv`; rows without any text are left out."""
    rows = read_csv(path)
    header = [name.strip() for name in rows[0]] if rows else []
    records = [{name: (row[k].strip() if k < len(row) else "") for k, name in enumerate(header)}
               for row in rows[1:] if any(cell.strip() for cell in row)]
    return header, records


def read_json(path: PathLike, remedy: str) -> Any:
    """The JSON of the record ``path`` that ddmr wrote; :class:`InputError` naming it and
    ``remedy`` (what the user can do) when it cannot be read or is not JSON."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read it ({error}); {remedy}") from None
