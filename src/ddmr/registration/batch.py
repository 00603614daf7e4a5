"""Batch registration: a CSV of pairs registered with one loaded model, in shards.

A pairs CSV has columns ``fixed,moving[,fixed_labels,moving_labels][,id]`` (UTF-8, with
or without a byte-order mark; relative paths are relative to the CSV's folder; the label
map columns' old names ``fixed_seg,moving_seg`` still work for one release). Ids are
checked before any work: safe file names of at most :data:`MAX_ID_LENGTH` characters,
unique, and not the name of a file DDMR writes there.

The batch folder ``OUT`` holds one complete output folder per pair, ``OUT/<id>/``
(written atomically: a pair is done when its ``summary.json`` exists), and
``OUT/batch.csv``, one row per pair (timings, metrics, QC verdict), and ``OUT/index.html``,
the pairs worst QC first with links to their QC pages (:mod:`ddmr.registration.
batch_index`; rewritten as the batch goes and at its end). With ``shard=(I, N)``
a process registers every N-th pair from the I-th (1-based), so N processes (a SLURM or
any job array) share a cohort; each writes ``OUT/batch-I-of-N.csv`` and :func:`merge`
(``ddmr register --merge OUT``) joins them into ``OUT/batch.csv`` (and writes
``OUT/index.html``) once all pairs are done.

A rerun registers only the pairs not done (a batch resumes where it stopped), and reuses a
done pair only when nothing it was registered from changed: ``.ddmr-batch.json`` records
the pairs' ids and the settings (model, affine stage, engine, QC limits), and each pair's
``summary.json`` its input files (``batch_input``: path, size, mtime, SHA-256). Other ids,
other settings or a changed row or file are refused, naming what changed.

The processes of one batch share a lock on ``.OUT.ddmr-batch.lock`` beside the folder;
``--overwrite`` deletes a folder of another batch only while it holds that lock alone, so
it never deletes the pairs of a process that runs.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddmr.deprecated import warn_renamed
from ddmr.errors import DDMRError, InputError, Interrupted

try:
    import fcntl
except ImportError:  # not on Windows: the shards of a batch are then not coordinated
    fcntl = None

PathLike = str | os.PathLike[str]

#: Longest pair id (it names a folder; file systems allow 255 bytes per name).
MAX_ID_LENGTH = 100
#: What a pair id may be made of: letters, digits, and ``.-_`` after the first.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Names in the batch folder that ids may not take.
RESERVED_IDS = ("batch.csv", "index.html")
#: The marker of a batch folder: the pairs' ids and the CSV they came from.
MARKER = ".ddmr-batch.json"
#: The label map columns of a pairs CSV -> their old names (still read, for one release).
LABEL_COLUMNS = {"fixed_labels": "fixed_seg", "moving_labels": "moving_seg"}
#: The per-pair columns of ``batch.csv``.
COLUMNS = ("id", "fixed", "moving", "seconds", "folding_percent", "dsc", "hd95", "tre", "qc",
           "qc_failed")


@dataclass(frozen=True)
class Pair:
    """One row of a pairs CSV (paths resolved against the CSV's folder)."""

    id: str
    fixed: Path
    moving: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None

    @property
    def fixed_seg(self) -> Path | None:
        """Deprecated: :attr:`fixed_labels`."""
        warn_renamed("Pair.fixed_seg", "Pair.fixed_labels")
        return self.fixed_labels

    @property
    def moving_seg(self) -> Path | None:
        """Deprecated: :attr:`moving_labels`."""
        warn_renamed("Pair.moving_seg", "Pair.moving_labels")
        return self.moving_labels


def check_pair_id(ident: str, where: str) -> str:
    """Return ``ident`` if it can name a pair's output folder; else raise
    :class:`InputError` saying why (``where``: the CSV and row, for the message)."""
    if len(ident) > MAX_ID_LENGTH:
        raise InputError(f"{where}: id of {len(ident)} characters is too long (at most "
                         f"{MAX_ID_LENGTH})")
    if not ID_PATTERN.fullmatch(ident):
        raise InputError(f"{where}: id {ident!r} is not a safe folder name (use letters, "
                         "digits and . - _, starting with a letter or digit)")
    if ident.lower() in RESERVED_IDS or re.fullmatch(r"batch-\d+-of-\d+\.csv", ident.lower()):
        raise InputError(f"{where}: id {ident!r} is the name of a file DDMR writes there")
    return ident


def read_pairs(path: PathLike) -> list[Pair]:
    """Read a pairs CSV (module docstring). Ids default to ``pair-001`` ... Raises
    :class:`InputError` for a missing file or column, a bad or duplicate id, or a listed
    file that does not exist."""
    from ddmr.io.files import read_csv_records

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    columns, rows = read_csv_records(path)
    missing = [c for c in ("fixed", "moving") if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} "
                         "(expected fixed,moving[,fixed_labels,moving_labels][,id])")
    if not rows:
        raise InputError(f"{path}: no pairs listed")
    for new, old in LABEL_COLUMNS.items():  # the old names of the label map columns
        if old in columns and new in columns:
            raise InputError(f"{path}: columns {old} and {new} both given ({old} is the old "
                             f"name of {new}); keep {new}")
        if old in columns:
            warn_renamed(f"{path}: column {old}", f"column {new}")
            for row in rows:
                row[new] = row.pop(old, "")

    def resolve(value: str) -> Path | None:
        if not value:
            return None
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else path.parent / candidate

    pairs = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        if not row.get("fixed") or not row.get("moving"):
            raise InputError(f"{path}: row {number} has no fixed or moving image")
        ident = check_pair_id(row.get("id") or f"pair-{number:03d}", f"{path}: row {number}")
        if ident in seen:
            raise InputError(f"{path}: duplicate id {ident!r}")
        seen.add(ident)
        pairs.append(Pair(ident, resolve(row["fixed"]), resolve(row["moving"]),
                          resolve(row.get("fixed_labels", "")),
                          resolve(row.get("moving_labels", ""))))
    for pair in pairs:
        for name in INPUTS.values():
            file = getattr(pair, name)
            if file is not None and not file.exists():
                raise InputError(f"{file}: no such file ({name} of pair {pair.id})")
    return pairs


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8): shard I of N, 1 <= I <= N; None (no ``--shard``) -> (1, 1).
    An empty or malformed text is refused (an unset variable in a job script must not
    make every task register every pair)."""
    if text is None:
        return 1, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise InputError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 3/8")
    return int(match.group(1)), int(match.group(2))


def _pair_summary(outdir: Path, pair_id: str) -> dict[str, Any]:
    """A done pair's ``summary.json``, checked to hold what ``batch.csv`` shows."""
    from ddmr.io.files import read_json

    path = outdir / pair_id / "summary.json"
    remedy = f"delete the folder {outdir / pair_id} to register the pair again"
    summary = read_json(path, remedy)
    try:
        _row(pair_id, summary)
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: not a summary that ddmr register wrote; {remedy}") from None
    return summary


def _row(pair_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    metrics, qc = summary["metrics"], summary["qc"]
    return {"id": pair_id, "fixed": summary["fixed"], "moving": summary["moving"],
            "seconds": summary["runtime_s"]["total"],
            **{k: metrics.get(k) for k in ("folding_percent", "dsc", "hd95", "tre")},
            "qc": "pass" if qc["passed"] else "fail", "qc_failed": " ".join(qc["failed"])}


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from ddmr.io.files import atomic_path

    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --- what a pair was registered from, and with which settings ---------------------------

#: The input files of a pair: the key of each in a pair's record (``summary.json``'s
#: ``batch_input``, unchanged from earlier batches) -> its field of :class:`Pair`.
INPUTS = {"fixed": "fixed", "moving": "moving", "fixed_seg": "fixed_labels",
          "moving_seg": "moving_labels"}


def _file_record(path: Path | None) -> dict[str, Any] | None:
    """Where a file is and what it holds: its path, size, mtime and SHA-256."""
    from ddmr.model.file import file_sha256

    if path is None:
        return None
    status = path.stat()
    return {"path": str(path.resolve()), "size": status.st_size,
            "mtime_ns": status.st_mtime_ns, "sha256": file_sha256(path)}


def pair_record(pair: Pair) -> dict[str, Any]:
    """What ``pair`` is registered from: each input file's :func:`_file_record`. Kept in
    the pair's ``summary.json`` (``batch_input``), so a rerun can tell a changed row or
    file from the one registered."""
    return {key: _file_record(getattr(pair, name)) for key, name in INPUTS.items()}


def _file_changed(recorded: dict[str, Any] | None, path: Path | None) -> str | None:
    """How the file at ``path`` differs from ``recorded`` (None: the same contents; the
    hash is computed only when the path, size or mtime differ)."""
    from ddmr.model.file import file_sha256

    if recorded is None or path is None:
        return None if recorded is None and path is None else \
            f"{recorded['path'] if recorded else 'none'} -> {path.resolve() if path else 'none'}"
    now = str(path.resolve())
    status = path.stat()
    if (now, status.st_size, status.st_mtime_ns) == \
            (recorded.get("path"), recorded.get("size"), recorded.get("mtime_ns")):
        return None
    if status.st_size == recorded.get("size") and file_sha256(path) == recorded.get("sha256"):
        return None  # moved, copied or touched: the same contents
    if now != recorded.get("path"):
        return f"{recorded.get('path')} -> {now}"
    return f"{now} changed since it was registered"


def _pair_changes(recorded: Any, pair: Pair) -> list[str]:
    """What differs between the record of a done pair and its row now."""
    if not isinstance(recorded, dict):
        return ["its inputs were not recorded (an older ddmr registered it)"]
    changes = []
    for key, name in INPUTS.items():
        try:
            change = _file_changed(recorded.get(key), getattr(pair, name))
        except (AttributeError, TypeError):
            change = "its record is not readable"
        if change:
            changes.append(f"{name} {change}")
    return changes


def batch_settings(model: Any, affine: str | bool, options: dict[str, Any]
                   ) -> dict[str, Any]:
    """The settings a batch's pairs are registered with, as JSON: the model (its file's
    SHA-256, or ``none`` for ``False``), the affine stage (``none`` for ``False``) and the
    options of :func:`ddmr.register` (the engine's and QC's settings, defaults filled
    in)."""
    import json
    from dataclasses import asdict, is_dataclass

    from ddmr.model.file import file_sha256
    from ddmr.registration.pipeline import NO_MODEL
    from ddmr.registration.qc import QCLimits
    from ddmr.registration.settings import EngineSettings

    options = dict(options)
    if options.get("engine", True) is True:
        options["engine"] = EngineSettings()
    if options.get("qc_limits") is None:
        options["qc_limits"] = QCLimits()
    record: dict[str, Any] = {"model": NO_MODEL if model is False else
                              file_sha256(model.path),
                              "affine": NO_MODEL if affine is False else affine}
    for key, value in sorted(options.items()):
        record[key] = asdict(value) if is_dataclass(value) else value
    return json.loads(json.dumps(record, default=repr))  # tuples as the marker holds them


def _differences(then: Any, now: Any, name: str = "") -> list[str]:
    """``"NAME THEN -> NOW"`` for each setting that differs (nested: ``engine.window``)."""
    if isinstance(then, dict) and isinstance(now, dict):
        return [change for key in sorted(set(then) | set(now)) for change in
                _differences(then.get(key), now.get(key), f"{name}.{key}" if name else key)]

    def shown(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    return [] if then == now else [f"{name} {shown(then)} -> {shown(now)}"]


def _settings_changes(then: Any, now: dict[str, Any]) -> list[str]:
    """The settings that differ between a batch's record ``then`` and ``now``."""
    if not isinstance(then, dict):
        return ["its settings were not recorded (an older ddmr made it)"]
    return _differences(then, now)


# --- the batch folder: its marker and its lock ------------------------------------------

class _BatchLock:
    """A ``flock`` on a hidden file beside the batch folder: shared by the processes (the
    shards) of one batch, exclusive while ``--overwrite`` replaces the folder, so that no
    process deletes the pairs of another that runs. The kernel releases it when a process
    dies; the last holder removes the file."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir.parent / f".{outdir.name}.ddmr-batch.lock"
        self.descriptor: int | None = None

    def acquire(self, exclusive: bool) -> bool:
        """Take the lock: exclusive at once or not at all (False); shared, waiting for an
        exclusive holder (a replacement of the folder under way) to finish."""
        if fcntl is None:
            return True
        from ddmr.io.files import write_errors

        while True:
            with write_errors(self.path.parent):
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive
                            else fcntl.LOCK_SH)
            except BlockingIOError:
                os.close(descriptor)
                return False
            if self._current(descriptor):
                self.descriptor = descriptor
                return True
            os.close(descriptor)  # the last holder removed the file meanwhile: lock anew

    def _current(self, descriptor: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            return False

    def share(self) -> None:
        """Turn an exclusive lock into a shared one (the folder is ready for the shards)."""
        if self.descriptor is not None:
            fcntl.flock(self.descriptor, fcntl.LOCK_SH)
            if not self._current(self.descriptor):
                self.release()
                self.acquire(exclusive=False)

    def release(self) -> None:
        if self.descriptor is None:
            return
        try:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._current(self.descriptor):
                self.path.unlink(missing_ok=True)  # no other process holds it
        except BlockingIOError:
            pass
        os.close(self.descriptor)
        self.descriptor = None


def _read_marker(outdir: Path) -> dict[str, Any] | None:
    """The batch folder's marker (None without one); a corrupt one in one line."""
    from ddmr.io.files import read_json

    marker = outdir / MARKER
    if not marker.is_file():
        return None
    remedy = ("pass --overwrite to register this batch afresh (it deletes the folder's pairs), "
              "or choose another output")
    record = read_json(marker, remedy)
    if not isinstance(record, dict) or not isinstance(record.get("ids"), list):
        raise InputError(f"{marker}: not a batch record of ddmr register --pairs (no list of "
                         f"ids); {remedy}")
    return record


def _marker_problem(record: dict[str, Any], ids: list[str], settings: dict[str, Any]
                    ) -> str | None:
    """Why the batch folder of ``record`` is not this batch's (None: it is)."""
    if record["ids"] != ids:
        return f"a batch folder of other pairs (its {MARKER} lists {len(record['ids'])} ids)"
    changes = _settings_changes(record.get("settings"), settings)
    if changes:
        more = f" (and {len(changes) - 4} more)" if len(changes) > 4 else ""
        return f"a batch registered with other settings: {'; '.join(changes[:4])}{more}"
    return None


#: Why ``--overwrite`` leaves a batch folder alone while another process uses it.
IN_USE = ("another process of a batch is using the folder now, and --overwrite would delete "
          "its pairs: wait for it to end, or choose another output")
#: What to do about a batch folder of other pairs or settings.
AFRESH = ("choose another output, or pass --overwrite to register this batch afresh (it "
          "deletes the folder's pairs)")


def _is_other_batch(outdir: Path, ids: list[str], settings: dict[str, Any]) -> bool:
    """True when ``outdir`` exists and is not this batch's folder."""
    if not outdir.exists():
        return False
    try:
        record = _read_marker(outdir)
    except InputError:
        return True
    return record is None or _marker_problem(record, ids, settings) is not None


def _is_this_batch(outdir: Path, ids: list[str], settings: dict[str, Any],
                   overwrite: bool) -> bool:
    """True when ``outdir`` is this batch's folder, False when there is none yet (no
    folder, or an empty one); else :class:`InputError` saying whose it is."""
    from ddmr.io.files import check_output_folder

    try:
        record = _read_marker(outdir)
    except InputError as error:
        if overwrite:
            raise InputError(f"{outdir}: its {MARKER} is not readable, and {IN_USE}") from None
        raise error from None
    if record is None:
        if overwrite and outdir.is_dir() and any(outdir.iterdir()):
            raise InputError(f"{outdir}: not a folder of this batch, and {IN_USE}")
        check_output_folder(outdir, overwrite=False, allow_empty=True)
        return False
    problem = _marker_problem(record, ids, settings)
    if problem:
        raise InputError(f"{outdir}: {problem}; {IN_USE if overwrite else AFRESH}")
    return True


def _make_batch_folder(outdir: Path, record: dict[str, Any]) -> bool:
    """Make ``outdir`` with its marker in one rename (it replaces an empty folder); False
    when another process made it first."""
    import errno
    import json
    import shutil
    import uuid

    from ddmr.io.files import atomic_path, write_errors

    temporary = outdir.with_name(f".{outdir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with write_errors(outdir):
            temporary.mkdir()
            with atomic_path(temporary / MARKER) as path:
                path.write_text(json.dumps(record, indent=2) + "\n")
            try:
                os.rename(temporary, outdir)
            except OSError as error:
                if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
        return True
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _open_batch(outdir: Path, pairs: list[Pair], pairs_csv: Path, settings: dict[str, Any],
                overwrite: bool, lock: _BatchLock) -> None:
    """Take ``lock`` and make ``outdir`` a batch folder, or check that it is this batch's
    (the same pairs and settings). With ``overwrite`` a folder that is not this batch's is
    deleted first, but only while no other process uses it (the lock is exclusive then,
    and shared once the folder is ready)."""
    import shutil

    from ddmr.io.files import check_output_folder

    ids = [pair.id for pair in pairs]
    check_output_folder(outdir, overwrite=True, allow_empty=True)  # writable, not below a file
    outdir.parent.mkdir(parents=True, exist_ok=True)
    exclusive = overwrite and lock.acquire(exclusive=True)
    if not exclusive:
        lock.acquire(exclusive=False)
    if exclusive and _is_other_batch(outdir, ids, settings):
        shutil.rmtree(outdir)  # not this batch's, and no other process uses it
    record = {"pairs_csv": str(pairs_csv.resolve()), "ids": ids, "settings": settings}
    # a process started at the same moment may make the folder first: then it is checked
    while not _is_this_batch(outdir, ids, settings, overwrite):
        if _make_batch_folder(outdir, record):
            break
    if exclusive:
        lock.share()


def _done_pairs(outdir: Path, pairs: list[Pair], overwrite: bool) -> dict[str, dict[str, Any]]:
    """The summaries of the pairs of ``pairs`` that are done and may be reused: done from
    the same inputs (a file moved or copied counts as the same). Without ``overwrite``, a
    pair whose row or files changed since is refused, naming what changed; with it, every
    pair is registered again (none is reused)."""
    if overwrite:
        return {}
    done, changed = {}, []
    for pair in pairs:
        if (outdir / pair.id / "summary.json").is_file():
            summary = _pair_summary(outdir, pair.id)
            changes = _pair_changes(summary.get("batch_input"), pair)
            if changes:
                changed.append((pair.id, changes))
            done[pair.id] = summary
    if changed:
        shown = "; ".join(f"{ident}: {', '.join(changes)}" for ident, changes in changed[:3])
        more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
        folders = ", ".join(str(outdir / ident) for ident, _ in changed[:3])
        raise InputError(f"{outdir}: {len(changed)} done pair(s) were registered from other "
                         f"inputs than the pairs CSV lists now: {shown}{more}; delete their "
                         f"folders ({folders}{', ...' if more else ''}) to register them "
                         "again, or pass --overwrite to register every pair again")
    return done


class _Stop(BaseException):
    """SIGTERM received: the batch stops at once (the pair under way is not kept)."""


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Inside, SIGTERM and SIGINT raise :class:`_Stop`, so a batch can say how far it got,
    whatever handlers the process had (a library's, or a training's left behind); the
    previous handlers are restored after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, frame: Any) -> None:
        raise _Stop(number)

    previous = {number: signal.signal(number, stop)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def register_pairs(pairs_csv: PathLike, outdir: PathLike, model: Any = None,
                   device: str = "cpu", affine: str | bool = "world", overwrite: bool = False,
                   progress: bool = True, shard: tuple[int, int] = (1, 1),
                   outputs: Iterable[str] | None = None, **options: Any
                   ) -> list[dict[str, Any]]:
    """Register the pairs of a pairs CSV (this process's ``shard``) into ``outdir/<id>/``
    (module docstring; the model is loaded once; ``model=False`` for no network,
    ``affine=False`` for no affine stage, as in :func:`ddmr.register`).

    A pair done before is reused when it was registered from the same inputs (the row's
    files, by path and contents) and the batch's settings are the same (model, affine
    stage, ``options``); a rerun whose settings or rows differ is refused, naming what
    changed, unless ``overwrite``, which registers this shard's pairs again (and deletes
    the folder first when it holds another batch and no other process uses it). A pair
    that fails QC is recorded and the batch goes on. Writes ``outdir/batch.csv`` (one
    shard) or ``outdir/batch-I-of-N.csv``. A pair whose input is bad gets a row with
    ``qc`` ``error`` and the message, and no folder (a rerun tries it again). SIGTERM or
    SIGINT stops the batch with :class:`ddmr.errors.Interrupted` saying how many pairs are
    done. ``outdir/index.html`` lists the batch's pairs worst QC first; it is rewritten at
    most every :data:`~ddmr.registration.batch_index.REWRITE_SECONDS` as pairs are done,
    and when the batch ends or stops. ``outputs``: the files each pair writes
    (:func:`~ddmr.registration.outputs.check_outputs`; default all, a choice is one of
    the settings). ``options`` go to :func:`ddmr.register`.

    Returns this shard's rows (``batch.csv``'s columns, and ``reused``: True for a pair
    done before, False for one registered now or not registered).
    """
    from tqdm.auto import tqdm

    from ddmr.model.shipped import check_device, load
    from ddmr.registration.batch_index import BatchIndex
    from ddmr.registration.outputs import OUTPUTS, check_outputs
    from ddmr.registration.pipeline import check_skips, register

    outdir = Path(outdir)
    index, count = shard
    if not 1 <= index <= count:
        raise InputError(f"shard {index}/{count}: expected I/N with 1 <= I <= N")
    model, affine = check_skips(model, affine, options.get("engine", True))
    pairs = read_pairs(pairs_csv)
    check_device(device)
    loaded = False if model is False else load(model, device)
    chosen = check_outputs(outputs)
    settings = batch_settings(loaded, affine, options)
    if chosen != tuple(OUTPUTS):  # (recorded only when chosen: earlier batches hold none)
        settings["outputs"] = list(chosen)
    mine = pairs[index - 1::count]
    lock = _BatchLock(outdir)
    rows: list[dict[str, Any]] = []
    pages = None
    try:
        _open_batch(outdir, pairs, Path(pairs_csv), settings, overwrite, lock)
        done = _done_pairs(outdir, mine, overwrite)
        pages = BatchIndex(outdir, [pair.id for pair in pairs])
        with _stop_on_signals():
            for pair in tqdm(mine, desc="ddmr register", unit="pair", disable=not progress):
                if pair.id in done:
                    rows.append({**_row(pair.id, done[pair.id]), "reused": True})
                    continue
                inputs = pair_record(pair)
                try:
                    result = register(pair.fixed, pair.moving, pair.fixed_labels,
                                      pair.moving_labels, loaded, device, affine, **options)
                except DDMRError as error:  # this pair's input: recorded, the batch goes on
                    rows.append({"id": pair.id, "fixed": str(pair.fixed),
                                 "moving": str(pair.moving), "qc": "error",
                                 "qc_failed": " ".join(str(error).split()), "reused": False})
                    continue
                result.summary["batch_input"] = inputs
                result.save(outdir / pair.id, overwrite=True, outputs=chosen)
                rows.append({**_row(pair.id, result.summary), "reused": False})
                pages.update(rows)
    except (_Stop, KeyboardInterrupt) as stop:
        import signal

        if pages is not None:
            with suppress(DDMRError, OSError):  # the pairs done so far, on the index page
                pages.write(rows)
        number = stop.args[0] if isinstance(stop, _Stop) else signal.SIGINT
        finished = [row for row in rows if row["qc"] != "error"]
        now = sum(not row["reused"] for row in finished)
        raise Interrupted(
            f"{outdir}: interrupted by {signal.Signals(number).name}: {len(finished)} of "
            f"{len(mine)} pairs{' of this shard' if count > 1 else ''} are done ({now} "
            "registered now) and kept; run the same command again to resume (done pairs "
            "are skipped, the pair under way is registered again)", number) from None
    finally:
        lock.release()
    _write_rows(outdir / ("batch.csv" if count == 1 else f"batch-{index}-of-{count}.csv"),
                rows)
    pages.write(rows)
    return rows


def merge(outdir: PathLike) -> list[dict[str, Any]]:
    """Join a batch folder's pairs into ``outdir/batch.csv`` (in the pairs CSV's order),
    from each pair's ``summary.json``, and write ``outdir/index.html``; :class:`InputError`
    naming the pairs not done yet, or a record that cannot be read."""
    outdir = Path(outdir)
    record = _read_marker(outdir) if outdir.is_dir() else None
    if record is None:
        raise InputError(f"{outdir}: not a batch folder of ddmr register --pairs (no {MARKER})")
    ids = record["ids"]
    missing = [i for i in ids if not (outdir / i / "summary.json").is_file()]
    if missing:
        raise InputError(f"{outdir}: {len(missing)} of {len(ids)} pairs are not done yet "
                         f"(e.g. {', '.join(missing[:3])}); run the remaining shards first")
    rows = [_row(i, _pair_summary(outdir, i)) for i in ids]
    _write_rows(outdir / "batch.csv", rows)
    from ddmr.registration.batch_index import write_batch_index

    write_batch_index(outdir, ids, rows)
    return rows
