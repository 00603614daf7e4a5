"""Lightning callbacks and plugins: atomic checkpoints, periodic 'last' checkpoints for
``--resume``, stopping cleanly on SIGINT/SIGTERM, and the encoder-freezing schedule of
two-step fine-tuning."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
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
        with write_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)


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
