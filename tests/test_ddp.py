"""Multi-process training with Lightning's DDP strategy on two CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ddmr.model.file import load_model
from train_helpers import make_dataset


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    data = make_dataset(tmp_path / "data", n=6)
    script = Path(__file__).with_name("ddp_run.py")
    env = {**os.environ, "PYTHONPATH": str(script.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(data), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    card = load_model(tmp_path / "run" / "model.safetensors").card
    assert card["training"]["steps"] == 3
