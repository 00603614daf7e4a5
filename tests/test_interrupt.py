"""A training run killed with SIGKILL mid-run resumes with ``--resume`` from its last
checkpoint and loses at most the steps since that checkpoint (issue 10), with a real
``ddmr train`` process and a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from bad_input_cases import tiny_config
from train_helpers import make_dataset

CHECKPOINT_EVERY = 5
KILL_AFTER = 8  # completed steps; not a multiple of CHECKPOINT_EVERY, so some are lost

# `ddmr train` (the console entry point, ddmr.cli.main) with one extra Lightning callback
# that prints each completed optimiser step, so the test knows how far the run got when
# it was killed. It runs after LastCheckpoint (callbacks run in order), so a printed step
# that is a multiple of checkpoint_every has its checkpoint on disk.
REPORTING_CLI = """
import sys
import lightning as L
import ddmr.train.run as run

class ReportSteps(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        print(trainer.global_step, flush=True)

fit = run.fit
def reporting_fit(*args, **kwargs):
    kwargs["extra_callbacks"] = [*kwargs.get("extra_callbacks", ()), ReportSteps()]
    return fit(*args, **kwargs)
run.fit = reporting_fit

from ddmr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def checkpoint_step(path: Path) -> int | None:
    """The global step stored in a checkpoint, or None while there is none."""
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def printed_steps(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split() if line.isdigit()]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_at_most_checkpoint_every_steps(tmp_path):
    data = make_dataset(tmp_path, n=5, size=16)
    # rigid-only pairs on the prepared 16^3 grid: about 0.6 s a step here (TPS pairs take
    # several times longer and are not what this test is about)
    config = {**tiny_config(), "max_steps": 10_000, "checkpoint_every": CHECKPOINT_EVERY,
              "val_every": 4, "input_size": [16, 16, 16], "augmentation": {"nonrigid": False}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    started = time.monotonic()
    argv = ["train", "--design", "BL-N", "--data", str(data), "--config",
            str(tmp_path / "run.yaml"), "--no-progress", "-o", str(run)]
    stdout, stderr = tmp_path / "first.out", tmp_path / "first.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        process = subprocess.Popen([sys.executable, "-c", REPORTING_CLI, *argv], stdout=out,
                                   stderr=err)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                steps = printed_steps(stdout)
                if steps and steps[-1] >= KILL_AFTER:
                    break
                time.sleep(0.05)
            assert process.poll() is None, f"the run ended early:\n{stderr.read_text()[-3000:]}"
            assert printed_steps(stdout)[-1:] >= [KILL_AFTER], "the run did not get far enough"
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == -signal.SIGKILL
    print(f"killed after {time.monotonic() - started:.1f} s")
    reached = printed_steps(stdout)[-1]
    saved = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert saved is not None and saved % CHECKPOINT_EVERY == 0
    assert 0 <= reached - saved < CHECKPOINT_EVERY, (reached, saved)
    assert not (run / "model.safetensors").exists()

    # --resume continues from the checkpoint (without it the run folder is refused: tested
    # in test_bad_inputs.py)
    target = saved + 3
    resumed = subprocess.run([sys.executable, "-c", REPORTING_CLI, *argv, "--resume",
                              "--max-steps", str(target)], capture_output=True, text=True,
                             check=False, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    print(f"resumed and finished after {time.monotonic() - started:.1f} s")
    steps = [int(s) for s in resumed.stdout.split() if s.isdigit()]
    assert steps == list(range(saved + 1, target + 1))  # picks up right after the checkpoint
    card = json.loads((run / "model.json").read_text())
    assert card["training"]["steps"] == target
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["run00", "run01"]
    logged = pd.read_csv(run / "logs" / "run01" / "metrics.csv")["step"].dropna()
    assert logged.min() >= saved
