"""Training runs: data, module, trainer, checkpoints, exported model file.

A run directory holds ``run.json`` (the data and command), ``checkpoints/`` (``best.ckpt``
by validation loss, ``last.ckpt`` for ``--resume``), ``logs/`` (CSV), ``tensorboard/``,
``plots/`` and, at the end (or from ``ddmr export`` at any time), ``model.safetensors``
with its card ``model.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.designs import Design
from ddmr.errors import InputError
from ddmr.train.profiles import TrainingProfile
from ddmr.train.resume import (
    RUN_FILE,
    RunOptions,
    check_resume_settings,
    check_rundir,
    data_fingerprint,
    is_secondary_process,
    read_run_file,
    run_lock,
    stored_best_score,
    write_run_file,
)

logger = logging.getLogger(__name__)


def data_summary(data: str | Path) -> dict[str, Any]:
    """Split sizes, label values (union over subjects), spacing and the smallest and
    largest foreground (mL, :func:`~ddmr.registration.moments.foreground_mask`) of the
    training and validation subjects of a prepared dataset."""
    import h5py

    from ddmr.data.dataset import dataset_file, read_split
    from ddmr.registration.moments import foreground_mask, foreground_ml
    from ddmr.spatial.grid import Geometry

    h5_path = dataset_file(data)
    split = read_split(h5_path)
    values: set[int] = set()
    spacings, volumes = [], []
    with h5py.File(h5_path, "r") as h5:
        for ident in split["train"] + split["val"]:
            attrs = h5[ident].attrs
            if "label_values" in attrs:
                values.update(int(v) for v in np.atleast_1d(attrs["label_values"]))
            spacings.append([float(s) for s in attrs["spacing"]])
            image = h5[ident]["image"][()]
            shape = list(image.shape)
            volumes.append(foreground_ml(foreground_mask(image),
                                         Geometry(np.asarray(attrs["affine"]), image.shape)))
    prepare_json = h5_path.parent / "prepare.json"
    return {
        "path": str(Path(data).resolve()),
        "subjects": {name: len(ids) for name, ids in split.items()},
        "label_values": sorted(values | {0}) if values else [],
        "spacing_mm": spacings[0] if spacings else None,
        "shape": shape if spacings else None,
        "foreground_ml": [round(min(volumes)), round(max(volumes))] if volumes else None,
        "preparation": prepare_json.read_text() if prepare_json.is_file() else None,
    }


def _segment_name(rundir: Path) -> str:
    existing = sorted(rundir.glob("logs/run*"))
    return f"run{len(existing):02d}"


def _quiet_lightning() -> None:
    """Lightning's INFO banners and tips only when ddmr itself logs at INFO (``-v``)."""
    import warnings

    if not logging.getLogger("ddmr").isEnabledFor(logging.INFO):
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # --resume continues in the same checkpoint folder on purpose
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # and mid-epoch: the loader's order restarts, the pairs stay random (the augmentation's
    # generator is restored), so the resumed run is as good as the uninterrupted one
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended "
                            "before the epoch ended")


def _tensorboard_logger(rundir: Path, segment: str) -> Any | None:
    """Lightning's TensorBoard logger for ``rundir/tensorboard/segment`` when tensorboard
    (or tensorboardX) can be imported; None, with a log line, when neither can."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            logger.info("tensorboard is not installed: no tensorboard/ logs for this run "
                        "(the CSV logs and plots are written; pip install tensorboard)")
            return None
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(rundir, name="tensorboard", version=segment)


def _checkpoint_files(ckpt_dir: Path) -> dict[str, tuple[int, int]]:
    """Checkpoint name -> (size, mtime in ns): what a run could be resumed from."""
    if not ckpt_dir.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in ckpt_dir.glob("*.ckpt")}


def _discard_unsaved(rundir: Path, new_run: bool, existed: bool, segment: str) -> None:
    """Remove what a run that failed before its first checkpoint wrote: everything of a
    new run (its folder too unless it ``existed``, empty, before), else the new segment's
    logs."""
    import shutil

    if new_run:
        if not existed:
            shutil.rmtree(rundir, ignore_errors=True)
            return
        for child in rundir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        return
    for folder in (rundir / "logs" / segment, rundir / "tensorboard" / segment):
        shutil.rmtree(folder, ignore_errors=True)


def _stop_message(rundir: Path, options: RunOptions, received: int | None, step: int) -> str:
    """One line: which signal, the step, the checkpoint kept and how to continue."""
    import signal as signals

    last = rundir / "checkpoints" / "last.ckpt"
    name = signals.Signals(received).name if received else "a signal"
    command = options.command or f"ddmr train ... -o {rundir}"
    if "--resume" not in command.split():
        command += " --resume"
    kept = (f"checkpoint {last} saved" if last.is_file() else
            "no checkpoint was saved yet; start it again")
    return (f"interrupted by {name} after step {step}: {kept}; no model file was written; "
            f"continue with: {command}")


def fit(design: Design, profile: TrainingProfile, data: str | Path, options: RunOptions,
        initial_state: dict | None = None, freeze_until: int = 0,
        card_extra: dict[str, Any] | None = None,
        extra_callbacks: Sequence[Any] = ()) -> Path | None:
    """Train ``design`` on prepared ``data``; returns the exported model file (rank 0).

    The data is checked first; then the run folder is locked (:func:`run_lock`) for the
    whole training. ``extra_callbacks`` are Lightning callbacks added to the run (for
    instrumentation).
    """
    from ddmr.augment.files import check_tps_memory

    summary = data_summary(data)
    if design.needs_segmentations and len(summary["label_values"]) < 2:
        raise InputError(f"{data}: design {design.name} is segmentation-guided but the "
                         "prepared data has no label maps")
    if summary["subjects"]["train"] == 0 or summary["subjects"]["val"] == 0:
        raise InputError(f"{data}: training needs subjects in both the train and val splits "
                         f"(have {summary['subjects']})")
    if summary["shape"] and summary["spacing_mm"]:
        from ddmr.spatial.grid import resized_spacing

        spacing = resized_spacing(summary["spacing_mm"], summary["shape"], profile.input_size)
        check_tps_memory(profile.input_size, spacing, profile.augmentation,
                         "augmentation.tps_grid")
    label_values = summary["label_values"] or [0]
    with run_lock(options.rundir):
        return _fit_locked(design, profile, data, options, summary, label_values,
                           initial_state, freeze_until, card_extra, extra_callbacks)


def _fit_locked(design: Design, profile: TrainingProfile, data: str | Path,
                options: RunOptions, summary: dict[str, Any], label_values: list[int],
                initial_state: dict | None, freeze_until: int,
                card_extra: dict[str, Any] | None,
                extra_callbacks: Sequence[Any]) -> Path | None:
    """:func:`fit` once its data is checked and its run folder locked."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import CSVLogger

    from ddmr.data.datamodule import PreparedDataModule
    from ddmr.errors import DivergenceError, Interrupted, WriteError
    from ddmr.io.files import write_failure
    from ddmr.train.callbacks import (
        AtomicCheckpointIO,
        BestCheckpoint,
        FreezeSchedule,
        LastCheckpoint,
        StopOnSignal,
    )
    from ddmr.train.module import RegistrationModule
    from ddmr.train.plots import plot_training

    _quiet_lightning()  # after Lightning's import, which sets its loggers' levels
    resume_from, checkpoint = check_rundir(options)
    rundir = options.rundir
    if checkpoint is not None:
        check_resume_settings(rundir, checkpoint, design, profile, summary, label_values,
                               card_extra)
        del checkpoint
    primary = not is_secondary_process()
    new_run = primary and resume_from is None
    ckpt_dir = rundir / "checkpoints"
    saved_before = _checkpoint_files(ckpt_dir)
    segment = _segment_name(rundir)
    existed = rundir.exists()
    rundir.mkdir(parents=True, exist_ok=True)
    try:
        if primary:
            write_run_file(rundir, data, options.command or shlex.join(sys.argv), card_extra,
                            data_fingerprint(summary))
        started = time.time()
        L.seed_everything(profile.seed, workers=True, verbose=False)
        module = RegistrationModule(design.to_dict(), profile.to_dict(), label_values,
                                    seed=profile.seed)
        if initial_state is not None:
            module.network.load_state_dict(initial_state)
        datamodule = PreparedDataModule(data, batch_size=profile.batch_size,
                                        num_workers=profile.num_workers,
                                        require_labels=design.needs_segmentations,
                                        seed=profile.seed)
        best = BestCheckpoint(ckpt_dir)
        last = LastCheckpoint(ckpt_dir, profile.checkpoint_every)
        stopper = StopOnSignal(last)
        callbacks: list[L.Callback] = [best, last, stopper, *extra_callbacks]
        if freeze_until > 0:
            callbacks.append(FreezeSchedule(("input", "encoder"), freeze_until))
        if profile.early_stopping:
            callbacks.append(EarlyStopping("val_loss", patience=profile.early_stopping))
        loggers = [CSVLogger(rundir, name="logs", version=segment)]
        tensorboard = _tensorboard_logger(rundir, segment)
        if tensorboard is not None:
            loggers.append(tensorboard)
        distributed = options.devices * options.num_nodes > 1
        trainer = L.Trainer(
            max_steps=profile.max_steps,
            accumulate_grad_batches=profile.accumulate,
            val_check_interval=profile.val_every * profile.accumulate,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            devices=options.devices,
            num_nodes=options.num_nodes,
            accelerator=options.accelerator,
            strategy="ddp" if distributed else "auto",
            precision=profile.precision if torch.cuda.is_available() else "32-true",
            callbacks=callbacks,
            logger=loggers,
            plugins=[AtomicCheckpointIO()],
            default_root_dir=rundir,
            enable_progress_bar=options.progress_bar,
            enable_model_summary=False,
        )
        stopper.install()
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        except SystemExit:  # Lightning's own exit on a second signal or on its SIGTERM path
            raise Interrupted(_stop_message(rundir, options, stopper.received or 2,
                                            int(trainer.global_step)),
                              stopper.received or 2) from None
        finally:
            stopper.restore()
        if stopper.received is not None:
            raise Interrupted(_stop_message(rundir, options, stopper.received,
                                            int(trainer.global_step)), stopper.received)
    except BaseException as error:
        unsaved = primary and _checkpoint_files(ckpt_dir) == saved_before
        if unsaved:
            _discard_unsaved(rundir, new_run, existed, segment)
        if isinstance(error, DivergenceError):
            kept = ("nothing was kept" if unsaved and new_run else
                    f"the last checkpoint ({ckpt_dir / 'last.ckpt'}) holds the weights "
                    "before it")
            raise DivergenceError(f"{rundir}: {error}; {kept}") from None
        failure = (write_failure(error, getattr(error, "filename", None) or rundir)
                   if isinstance(error, OSError | RuntimeError) else None)
        if failure is not None:  # a log or event file on a full disk: one line too
            raise failure from None
        raise
    if not trainer.is_global_zero:
        return None
    best_path = best.best_model_path or str(ckpt_dir / "last.ckpt")
    state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
    module.network.load_state_dict(_network_state(state))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("val")}
    validation = {"best_val_loss": float(best.best_model_score)
                  if best.best_model_score is not None else None, "last": metrics}
    training = {"steps": int(trainer.global_step),
                "seconds_this_segment": round(time.time() - started, 1),
                "training_hours_total": round(module.elapsed_seconds() / 3600, 4),
                "best_checkpoint": Path(best_path).name}
    card = model_card(design, profile, summary, validation, training,
                      options.command or shlex.join(sys.argv), card_extra)
    from ddmr.model.file import save_model

    model_file = rundir / "model.safetensors"
    try:
        plot_training(rundir)
        return save_model(model_file, module.network.cpu(), card)
    except WriteError as error:
        again = " --overwrite" if model_file.exists() else ""
        raise InputError(f"{error}; the checkpoints are kept: make room, then "
                         f"ddmr export {rundir}{again}") from None


#: A run directory's record of what it trains on (for ``ddmr export``).
def _network_state(state: dict[str, Any]) -> dict[str, Any]:
    """The network's weights from a Lightning ``state_dict`` (prefix ``network.``)."""
    return {k.removeprefix("network."): v for k, v in state.items()
            if k.startswith("network.")}


def model_card(design: Design, profile: TrainingProfile, summary: dict[str, Any],
               validation: dict[str, Any], training: dict[str, Any], command: str,
               card_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card stored with an exported model: design, profile, data and preparation,
    validation and training figures, the command, creation time, DDMR version, and what
    input the model expects (the training images' foreground range; ``card_extra`` may
    say more)."""
    from ddmr import __version__

    return {
        "design": design.to_dict(),
        "profile": profile.to_dict(),
        "input_size": list(profile.input_size),
        "normalisation": "min-max to [0, 1] after resizing to input_size",
        "data": {k: v for k, v in summary.items() if k != "preparation"},
        "preparation": summary["preparation"],
        "label_values": summary["label_values"],
        "validation": validation,
        "training": training,
        "command": command,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **({"expects": {"foreground_ml": summary["foreground_ml"]}}
           if summary.get("foreground_ml") else {}),
        **(card_extra or {}),
        "ddmr_version": __version__,
    }


def export_run(rundir: str | Path, checkpoint: str = "best", data: str | Path | None = None,
               output: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` (or ``output``) from a run's ``best``/``last``
    checkpoint, with the card :func:`fit` writes at the end: for a run that is still
    going, was stopped, or ran out of time. ``data`` defaults to the run's record
    (``run.json``); the card's command is the run's."""
    import torch

    from ddmr.io.files import check_output_file
    from ddmr.model.file import check_finite_weights, save_model
    from ddmr.train.module import RegistrationModule
    from ddmr.train.plots import plot_training

    rundir = Path(rundir)
    if checkpoint not in ("best", "last"):
        raise InputError(f"--checkpoint {checkpoint}: choose best or last")
    path = rundir / "checkpoints" / f"{checkpoint}.ckpt"
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint (is {rundir} a ddmr train run folder?)")
    output = Path(output) if output is not None else rundir / "model.safetensors"
    if output.suffix != ".safetensors":
        raise InputError(f"{output}: a model file's name must end in .safetensors (it is a "
                         "safetensors file, not a pickle)")
    check_output_file(output, overwrite)
    record = read_run_file(rundir)
    data = data if data is not None else record.get("data")
    if data is None:
        raise InputError(f"{rundir}: no {RUN_FILE} (a run from before it existed): pass --data")
    summary = data_summary(data)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError, ...
        raise InputError(f"{path}: cannot read the checkpoint ({type(error).__name__})") \
            from None
    try:
        hyper = state["hyper_parameters"]
        design, profile = Design.from_dict(hyper["design"]), TrainingProfile.from_dict(
            hyper["profile"])
        module = RegistrationModule(hyper["design"], hyper["profile"], hyper["label_values"],
                                    seed=hyper.get("seed", 0))
        module.network.load_state_dict(_network_state(state["state_dict"]))
    except (KeyError, RuntimeError, TypeError, AttributeError) as error:
        raise InputError(f"{path}: not a ddmr training checkpoint "
                         f"({type(error).__name__}: {error})") from None
    check_finite_weights(module.network.state_dict(), path)
    validation = {"best_val_loss": stored_best_score(state) if checkpoint == "best" else None,
                  "last": {}}
    training = {"steps": int(state.get("global_step", 0)),
                "training_hours_total": round(float(state.get("ddmr_elapsed_s", 0.0)) / 3600,
                                              4),
                "best_checkpoint": path.name, "exported_with": "ddmr export"}
    card = model_card(design, profile, summary, validation, training,
                      record.get("command", f"(unknown: {RUN_FILE} missing)"),
                      record.get("card_extra"))
    plot_training(rundir)  # first: a full disk then leaves no model beside stale plots
    return save_model(output, module.network.cpu(), card)


