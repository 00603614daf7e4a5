"""Lightning callbacks and plugins: atomic checkpoints, the best checkpoint by validation
loss, periodic 'last' checkpoints for ``--resume``, stopping cleanly on SIGINT/SIGTERM,
and the encoder-freezing schedule of two-step fine-tuning."""

from __future__ import annotations

import io
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddmr.io.files import atomic_path, write_errors


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary name, syncs it to disk, then renames it: a
    kill (or a power cut) at any moment leaves either the old checkpoint or the new one.
    A full disk or a read-only folder ends in one :class:`ddmr.errors.InputError`, the
    old checkpoint kept."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        path = Path(path)
        # serialised in memory first: torch's zip writer reports a failed write to a file
        # as "unexpected pos N vs M", without the system's reason (a full disk)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_bytes(buffer.getbuffer())


class BestCheckpoint(ModelCheckpoint):
    """Keeps ``dirpath/best.ckpt``, the checkpoint of the lowest validation loss.

    When a run resumes, the best loss so far is the one ``best.ckpt`` of this folder
    stores about itself (:func:`ddmr.train.resume.best_checkpoint`), not Lightning's record
    in the resumed checkpoint: that record names the folder the run was in, so a copied
    or moved run forgot its best (the next validation, however worse, replaced
    ``best.ckpt``, or the old folder's file was exported), and it is saved before the
    validation of its step, so it can be older than ``best.ckpt``.
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor="val_loss", mode="min",
                         save_top_k=1, enable_version_counter=False)

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, as in the checkpoints of runs started before this class
        (Lightning warns about a record that no callback takes)."""
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's record is not used (see :meth:`on_fit_start`)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The best so far: ``best.ckpt`` of this folder and the loss it stores (none in a
        new run)."""
        from ddmr.train.resume import best_checkpoint

        super().on_fit_start(trainer, pl_module)
        found = best_checkpoint(Path(self.dirpath))
        path, score = (str(found[0]), torch.tensor(found[1])) if found else ("", None)
        self.best_model_path = self.kth_best_model_path = path
        self.best_model_score = self.current_score = score
        self.best_k_models = {path: score} if found else {}
        self.kth_value = score if found else torch.tensor(float("inf"))


class LastCheckpoint(L.Callback):
    """Saves ``dirpath/last.ckpt`` every ``every_n_steps`` optimiser steps and at the end."""

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every = max(1, int(every_n_steps))
        self._saved_at = -1

    def save(self, trainer: L.Trainer) -> None:
        """Save ``last.ckpt`` unless it already holds this step."""
        if trainer.global_step != self._saved_at:
            trainer.save_checkpoint(self.path)
            self._saved_at = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)


class StopOnSignal(L.Callback):
    """On SIGINT or SIGTERM, finish the training batch under way, save ``last.ckpt``
    (through ``last``, a :class:`LastCheckpoint`) and stop the trainer; ``received`` is the
    signal. A second signal stops at once (``KeyboardInterrupt``). The ranks of a
    distributed run stop together (the decision is reduced over them at each batch).

    :meth:`install` before ``trainer.fit`` and :meth:`restore` after it; the handlers are
    installed again when training starts, over Lightning's own SIGTERM handler (which
    would end the run without a final checkpoint and with exit status 0).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, last: LastCheckpoint) -> None:
        self.last = last
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def _set_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a fit in another thread keeps its
        for number in self.SIGNALS:
            previous = signal.signal(number, self._handle)
            self._previous.setdefault(number, previous)

    def install(self) -> None:
        self._set_handlers()

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set_handlers()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.last.save(trainer)
            trainer.should_stop = True


class FreezeSchedule(L.Callback):
    """Freezes the network's named layer groups (see ``UNet.layer_groups``) until optimiser
    step ``until_step``, then trains everything (the paper's two-step fine-tuning)."""

    def __init__(self, groups: Sequence[str] = ("input", "encoder"), until_step: int = 0) -> None:
        self.groups = tuple(groups)
        self.until_step = int(until_step)
        self.frozen = False

    def _set(self, pl_module: L.LightningModule, frozen: bool) -> None:
        layer_groups = pl_module.network.layer_groups()
        unknown = [g for g in self.groups if g not in layer_groups]
        if unknown:
            raise ValueError(f"unknown layer groups {unknown}; have {list(layer_groups)}")
        for group in self.groups:
            for module in layer_groups[group]:
                for param in module.parameters():
                    param.requires_grad_(not frozen)
                    if frozen:
                        param.grad = None
        self.frozen = frozen

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set(pl_module, trainer.global_step < self.until_step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             *args: Any) -> None:
        if self.frozen and trainer.global_step >= self.until_step:
            self._set(pl_module, False)
