"""Lightning ``LightningDataModule`` over a prepared dataset (train/val/test splits)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ddmr.data.dataset import PreparedDataset


class PreparedDataModule(L.LightningDataModule):
    """Loaders for the splits of ``ddmr prepare`` output at ``path``.

    Batches are dicts of ``image`` (B, 1, D, H, W) float32, ``labels`` (B, 1, D, H, W)
    uint8 (when the subjects have labels), ``spacing`` (B, 3) mm and ``id`` (list of str).
    The training loader shuffles with a generator seeded by ``seed``; ``num_workers``
    worker processes each open the HDF5 file once.
    """

    def __init__(self, path: str | Path, batch_size: int = 1, num_workers: int = 0,
                 require_labels: bool = False, seed: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.require_labels = require_labels
        self.seed = seed
        self.pin_memory = pin_memory
        self.datasets: dict[str, PreparedDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                self.datasets[split] = PreparedDataset(self.path, split, self.require_labels)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory, generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
