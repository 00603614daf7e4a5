"""A run folder's state: whether a run may start or resume there, and ``run.json``.

A new run needs an empty or absent folder; ``--resume`` needs ``checkpoints/last.ckpt``
and the settings the run was started with (``run.json`` and the checkpoint's own
design and profile): only :data:`RESUME_MAY_CHANGE` may differ, every other difference
is refused before anything is written, naming the fields. One trainer at a time holds
a run folder (:func:`run_lock`); a resumed run's best validation loss is read from its
``best.ckpt`` (:func:`best_checkpoint`), so a copied or moved run keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddmr.designs import Design
from ddmr.errors import InputError
from ddmr.train.profiles import TrainingProfile

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Where and how to run: devices, resume, overwrite, the command for the card
    (:func:`ddmr.train.run.fit` takes them; here, with the run folder's checks, so that
    neither module imports the other)."""

    rundir: Path
    resume: bool = False
    overwrite: bool = False
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    progress_bar: bool = True
    command: str | None = None


def is_secondary_process() -> bool:
    """True in the processes that a DDP launcher (Lightning, torchrun, SLURM) starts beside
    the first one: they must not check, clear or create the run directory again."""
    import os

    return any(int(os.environ.get(key, "0") or 0) > 0
               for key in ("LOCAL_RANK", "NODE_RANK", "RANK"))


@contextmanager
def run_lock(rundir: Path) -> Iterator[None]:
    """Hold the run folder's exclusive lock for a whole training (:func:`ddmr.io.files.
    output_lock`: a ``.RUN.lock`` file beside it, held with ``flock``): a second trainer
    (``train``, ``finetune``, ``--resume``, ``demo``) of the same folder, under any of its
    names, is refused in one line before it writes anything. The processes that a DDP
    launcher starts beside the first one run under its lock."""
    if is_secondary_process():
        yield
        return
    from ddmr.io.files import check_output_folder, output_lock, write_errors

    rundir = Path(rundir).resolve()
    check_output_folder(rundir, overwrite=True)  # a file in the way, a read-only place
    with write_errors(rundir):
        rundir.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(rundir):
        yield


def check_rundir(options: RunOptions) -> tuple[Path | None, dict[str, Any] | None]:
    """Validate the run directory; return the checkpoint to resume from and its content
    (``(None, None)`` for a new run)."""
    from ddmr.io.files import check_output_folder

    rundir = options.rundir
    last = rundir / "checkpoints" / "last.ckpt"
    if is_secondary_process():
        return (last, None) if options.resume else (None, None)
    if options.resume:
        if not last.is_file():
            raise InputError(f"{rundir}: nothing to resume (no checkpoints/last.ckpt)")
        checkpoint = _check_checkpoint(last)
        check_output_folder(rundir, overwrite=True)  # still writable
        return last, checkpoint
    if rundir.exists() and rundir.is_dir() and any(rundir.iterdir()) and not options.overwrite:
        raise InputError(f"{rundir}: run directory exists and is not empty; use --resume to "
                         "continue it or --overwrite to start again")
    check_output_folder(rundir, overwrite=True)
    if rundir.exists() and options.overwrite:
        import shutil

        shutil.rmtree(rundir)
    return None, None


def _check_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint as plain data, refusing one that does not load (truncated,
    corrupt, foreign) before anything is written into the run directory."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise InputError(f"{path}: cannot read the checkpoint ({type(error).__name__}); "
                         "start again with --overwrite") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint \
            or not isinstance(checkpoint.get("hyper_parameters"), dict):
        raise InputError(f"{path}: not a ddmr training checkpoint")
    return checkpoint


def stored_best_score(checkpoint: dict[str, Any]) -> float | None:
    """The best validation loss that a Lightning checkpoint records (its ModelCheckpoint
    state); in ``best.ckpt``, its own loss. None when it records none."""
    scores = (c.get("best_model_score") for c in (checkpoint.get("callbacks") or {}).values()
              if isinstance(c, dict))
    score = next((s for s in scores if s is not None), None)
    return float(score) if score is not None else None


def best_checkpoint(ckpt_dir: Path) -> tuple[Path, float] | None:
    """``ckpt_dir/best.ckpt`` and the validation loss it stores about itself, wherever the
    run folder was made (paths inside checkpoints are not used); None when there is no
    such file or it records no loss. A file that does not load is refused
    (:class:`InputError`)."""
    path = ckpt_dir / "best.ckpt"
    if not path.is_file():
        return None
    score = stored_best_score(_check_checkpoint(path))
    return (path, score) if score is not None else None


#: profile fields that a resumed run may change (how long, how often it checkpoints and
#: validates, how it loads data); any other difference is refused
RESUME_MAY_CHANGE = ("max_steps", "checkpoint_every", "val_every", "early_stopping",
                     "num_workers")


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as ``{"a.b": leaf}``, sequences as lists (JSON's view)."""
    import json

    value = json.loads(json.dumps(value, default=str))
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flat(item, f"{prefix}.{key}"))
    return out or {prefix: {}}


def data_fingerprint(summary: dict[str, Any]) -> str:
    """SHA-256 of what identifies a prepared dataset (splits, labels, grid, preparation),
    not of where it lies: a dataset that moved keeps its fingerprint."""
    import hashlib
    import json

    fields = {k: v for k, v in summary.items() if k != "path"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _finetune_identity(card_extra: dict[str, Any] | None) -> dict[str, Any]:
    """What a fine-tuning run's ``card_extra`` says about its source (not its path)."""
    extra = card_extra or {}
    source = extra.get("finetuned_from") or {}
    return {"source_sha256": source.get("sha256"), "finetune": extra.get("finetune")}


def check_resume_settings(rundir: Path, checkpoint: dict[str, Any], design: Design,
                           profile: TrainingProfile, summary: dict[str, Any],
                           label_values: list[int], card_extra: dict[str, Any] | None) -> None:
    """Refuse a resume whose design, profile (but :data:`RESUME_MAY_CHANGE`), data or
    fine-tuning source differ from the run's, naming the fields that differ."""
    hyper = checkpoint["hyper_parameters"]
    then = {**_flat(hyper.get("design"), "design"),
            **_flat({k: v for k, v in (hyper.get("profile") or {}).items()
                     if k not in RESUME_MAY_CHANGE}, "profile"),
            "label_values": hyper.get("label_values")}
    now = {**_flat(design.to_dict(), "design"),
           **_flat({k: v for k, v in profile.to_dict().items()
                    if k not in RESUME_MAY_CHANGE}, "profile"),
           "label_values": list(label_values)}
    try:
        record = read_run_file(rundir)
    except InputError:
        record = {}  # an unreadable record is replaced
    if record.get("data_sha256"):
        then["data"] = record.get("data")
        now["data"] = (record.get("data") if record["data_sha256"] == data_fingerprint(summary)
                       else summary["path"])
    if "card_extra" in record:
        then.update(_flat(_finetune_identity(record["card_extra"]), "finetune"))
        now.update(_flat(_finetune_identity(card_extra), "finetune"))
    # fields that only one side has (a ddmr version that added or dropped one) are not
    # differences of the run's settings
    differ = [key for key in sorted(set(then) & set(now)) if then[key] != now[key]]
    if differ:
        shown = "; ".join(f"{key} {then[key]!r} -> {now[key]!r}" for key in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise InputError(
            f"{rundir}: --resume with other settings than the run's: {shown}{more}; only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change (start a new run with another -o, or "
            "--overwrite)")


RUN_FILE = "run.json"


def read_run_file(rundir: Path) -> dict[str, Any]:
    """The run's record (``run.json``; empty for a run without one); :class:`InputError`
    in one line when it is not readable JSON of a record."""
    from ddmr.io.files import read_json

    path = Path(rundir) / RUN_FILE
    if not path.is_file():
        return {}
    remedy = ("restore it, or delete it and pass --data (the model card then lacks the "
              "run's command and fine-tuning record)")
    record = read_json(path, remedy)
    if not isinstance(record, dict):
        raise InputError(f"{path}: not a run record (a JSON object); {remedy}")
    return record


def write_run_file(rundir: Path, data: str | Path, command: str,
                    card_extra: dict[str, Any] | None, data_sha256: str) -> None:
    """Record the run's data (path and fingerprint, :func:`data_fingerprint`) and command;
    a resumed run updates the data's path (it may have moved) and keeps the command that
    started the run (the recipe)."""
    import json

    from ddmr.io.files import atomic_path

    record = {"data": str(Path(data).resolve()), "data_sha256": data_sha256,
              "command": command, "card_extra": card_extra or {}}
    with suppress(InputError):  # an unreadable record is replaced
        record["command"] = read_run_file(rundir).get("command", command)
    with atomic_path(rundir / RUN_FILE) as temporary:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
