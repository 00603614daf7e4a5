"""Run by test_ddp.py: trains a tiny design with DDP on two CPU processes (gloo) and has
every rank save its final weights, so that the test can compare them."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from ddmr.designs import get_design
from ddmr.train.run import RunOptions, fit
from train_helpers import tiny_profile


class SaveRankWeights(L.Callback):
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().cpu() for k, v in pl_module.network.state_dict().items()}
        torch.save(state, self.outdir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    data, outdir = Path(sys.argv[1]), Path(sys.argv[2])
    fit(get_design("BL-N"), tiny_profile(max_steps=3), data,
        RunOptions(outdir / "run", devices=2, accelerator="cpu", progress_bar=False),
        extra_callbacks=[SaveRankWeights(outdir)])
