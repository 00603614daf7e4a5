"""Lightning callbacks and plugins: atomic checkpoints, periodic 'last' checkpoints for
``--resume``, and the encoder-freezing schedule of two-step fine-tuning."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary name, then renames it: a kill at any moment
    leaves either the old checkpoint or the new one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class LastCheckpoint(L.Callback):
    """Saves ``dirpath/last.ckpt`` every ``every_n_steps`` optimiser steps and at the end."""

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every = max(1, int(every_n_steps))
        self._saved_at = -1

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self._saved_at:
            trainer.save_checkpoint(self.path)
            self._saved_at = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


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
