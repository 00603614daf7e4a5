"""Issue 33, training and export: a copied or moved run keeps its best checkpoint when it
resumes (item 12); one trainer at a time per run folder (item 18); a full disk at any
checkpoint and in ``export`` is one line (item 21). The full disks are small tmpfs
mounts, which needs root; elsewhere those tests are skipped and say why."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from bad_input_cases import tiny_config
from ddmr.cli import main
from ddmr.io.files import output_lock
from ddmr.model.file import load_model
from test_reliability_outputs import fill, tmpfs
from train_helpers import make_dataset

STEPS = 4  # validations after steps 2 and 4


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared data, a training configuration of a few 16^3 rigid steps and a run of it."""
    root = tmp_path_factory.mktemp("issue33_train")
    data = make_dataset(root, n=5, size=16)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(), "input_size": [16, 16, 16],
                                      "max_steps": STEPS, "val_every": 2,
                                      "augmentation": {"nonrigid": False}}))
    assert train(data, config, root / "trained") == 0
    return {"data": data, "config": config, "trained": root / "trained"}


def train(data, config, out, *extra):
    return main(["train", "--design", "BL-N", "--data", str(data), "--config", str(config),
                 "--no-progress", "-o", str(out), *extra])


def resume(workspace, run, *extra):
    return train(workspace["data"], workspace["config"], run, "--resume", *extra)


def one_line(err: str, command: str = "train") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ddmr {command}: error: "), lines[0]
    return lines[0]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b""
            for p in sorted(folder.rglob("*"))}


def network(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("network."): v for k, v in state.items()
            if k.startswith("network.")}


def same_weights(model_file, checkpoint) -> bool:
    weights = load_model(model_file).network.state_dict()
    return all(torch.equal(weights[k], v) for k, v in network(checkpoint).items())


def record_best_score(run, score: float) -> None:
    """Write ``score`` as the best validation loss that the run's checkpoints record."""
    for path in (run / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for state in checkpoint["callbacks"].values():
            if "best_model_score" in state:
                state["best_model_score"] = torch.tensor(score)
                state["best_k_models"] = {k: torch.tensor(score)
                                          for k in state["best_k_models"]}
        torch.save(checkpoint, path)


# ------------------------------------------------------------------- item 12


def test_a_copied_run_keeps_its_best_checkpoint_when_it_resumes(workspace, tmp_path, capsys):
    """Item 12: Lightning's record of the best names the folder the run was in, so a copy
    forgot it and the next validation, however worse, replaced ``best.ckpt``. The run's
    best is made one that no later validation beats (a loss of -1, below any NCC loss),
    as in a run whose validation loss rose after its best."""
    run = tmp_path / "copy"
    shutil.copytree(workspace["trained"], run)
    record_best_score(run, -1.0)
    best = run / "checkpoints" / "best.ckpt"
    before = best.read_bytes()
    assert resume(workspace, run, "--max-steps", str(STEPS + 2)) == 0, capsys.readouterr().err
    assert best.read_bytes() == before
    card = load_model(run / "model.safetensors").card
    assert card["validation"]["best_val_loss"] == -1.0
    assert card["training"]["steps"] == STEPS + 2
    assert same_weights(run / "model.safetensors", best)
    capsys.readouterr()
    exported = tmp_path / "exported.safetensors"
    assert main(["export", str(run), "-o", str(exported)]) == 0
    assert load_model(exported).card["validation"]["best_val_loss"] == -1.0
    assert same_weights(exported, best)


def test_a_moved_run_resumes_from_and_exports_its_own_best(workspace, tmp_path, capsys):
    """Item 12: moved, with no validation after the resume, the run loaded the old
    folder's ``best.ckpt`` (a traceback once that folder was gone); now its own."""
    original, run = tmp_path / "original", tmp_path / "moved"
    shutil.copytree(workspace["trained"], original)
    original.rename(run)
    best = run / "checkpoints" / "best.ckpt"
    callbacks = torch.load(best, map_location="cpu", weights_only=True)["callbacks"]
    score = next(float(state["best_model_score"]) for state in callbacks.values()
                 if "best_model_score" in state)
    status = resume(workspace, run, "--max-steps", str(STEPS + 1), "--val-every", "100")
    assert status == 0, capsys.readouterr().err
    card = load_model(run / "model.safetensors").card
    assert card["training"]["best_checkpoint"] == "best.ckpt"
    assert card["validation"]["best_val_loss"] == pytest.approx(score)
    assert same_weights(run / "model.safetensors", best)


# ------------------------------------------------------------------- item 18


@pytest.mark.parametrize("how", ["resume", "new run", "overwrite", "finetune"])
def test_a_second_trainer_of_a_run_is_refused_touching_nothing(workspace, tmp_path, capsys,
                                                               how):
    """Item 18: while another process trains in a run folder (it holds the folder's lock,
    as :func:`ddmr.train.resume.run_lock` takes it), a second ``train --resume``, ``train``
    (with or without ``--overwrite``) or ``finetune`` into it stops in one line, exit 2,
    the folder byte for byte as it was."""
    run = tmp_path / "run"
    shutil.copytree(workspace["trained"], run)
    before = tree(run)
    argv = {"resume": ["--resume", "--max-steps", str(STEPS + 2)], "new run": [],
            "overwrite": ["--overwrite"]}
    with output_lock(run.resolve()):
        if how == "finetune":
            status = main(["finetune", "--from", str(run / "model.safetensors"), "--data",
                           str(workspace["data"]), "--config", str(workspace["config"]),
                           "--no-progress", "-o", str(run)])
        else:
            status = train(workspace["data"], workspace["config"], run, *argv[how])
        line = one_line(capsys.readouterr().err, "finetune" if how == "finetune" else "train")
    assert status == 2
    assert "another ddmr process is writing this output now" in line, line
    assert tree(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the lock file is gone


def test_two_trainers_of_one_run_in_two_processes(workspace, tmp_path):
    """Item 18 with real processes: a second ``train --resume`` started while the first
    trains is refused in one line; the first goes on and stops cleanly on SIGTERM."""
    run = tmp_path / "run"
    shutil.copytree(workspace["trained"], run)
    argv = [sys.executable, "-m", "ddmr", "train", "--design", "BL-N", "--data",
            str(workspace["data"]), "--config", str(workspace["config"]), "--no-progress",
            "-o", str(run), "--resume", "--max-steps", "100000", "--val-every", "100000"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "logs" / "run01").is_dir():  # past its checks, training
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first trainer did not start"
            time.sleep(0.1)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                check=False)
        assert second.returncode == 2, second.stderr[-3000:]
        line = one_line(second.stderr)
        assert f"{run.resolve()}: another ddmr process is writing this output now" in line
        assert first.poll() is None
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 143, err[-3000:]
    assert sorted(p.name for p in (run / "logs").iterdir()) == ["run00", "run01"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------------------------- item 21


def test_a_checkpoint_that_runs_out_of_space_anywhere_is_one_write_error(tmp_path):
    """Item 21: torch's writer reported a disk that filled up in the middle of a tensor
    as ``RuntimeError: unexpected pos N vs M`` (a traceback from the trainer, here at 24
    of 34 fill levels), and only a write that found no room at all as the system's
    error. Every level below the checkpoint's size is now one :class:`WriteError`
    naming the checkpoint, no temporary left."""
    import io

    from ddmr.errors import WriteError
    from ddmr.train.callbacks import AtomicCheckpointIO

    checkpoint = {"state_dict": {f"w{i}": torch.rand(64, 64) for i in range(4)}}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with tmpfs(tmp_path / "disk", "1M") as disk:
        for leave in range(0, len(buffer.getvalue()) - (8 << 10), 2 << 10):
            fill(disk, leave)
            with pytest.raises(WriteError, match="No space left on device") as raised:
                AtomicCheckpointIO().save_checkpoint(checkpoint, disk / "last.ckpt")
            assert raised.value.path == disk / "last.ckpt"
            assert sorted(p.name for p in disk.iterdir()) == ["filler"], leave
            (disk / "filler").unlink()


def test_a_full_disk_at_the_second_checkpoint_is_one_line(workspace, tmp_path, capsys):
    """Item 21, through the trainer: the disk holds one checkpoint, not two; one line
    naming the checkpoint, the first checkpoint kept to resume from, no temporary left."""
    size = (workspace["trained"] / "checkpoints" / "last.ckpt").stat().st_size
    with tmpfs(tmp_path / "disk", "1M") as disk:
        fill(disk, int(size * 1.5))
        run = disk / "run"
        status = train(workspace["data"], workspace["config"], run)
        line = one_line(capsys.readouterr().err)
        assert status == 2
        assert line.startswith(f"ddmr train: error: {run / 'checkpoints'}/"), line
        assert ".ckpt: cannot write: No space left on device" in line, line
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]
        assert not (run / "model.safetensors").exists()


def test_a_model_file_that_does_not_fit_at_the_end_of_training_says_how_to_export(
        workspace, tmp_path, capsys, monkeypatch):
    """Item 21: the model file is written after the last checkpoint; when it cannot be,
    the line says that the checkpoints are kept and how to export them."""
    import ddmr.model.file
    from ddmr.errors import WriteError

    def full_disk(path, *args):
        raise WriteError(path, "No space left on device")

    monkeypatch.setattr(ddmr.model.file, "save_model", full_disk)
    run = tmp_path / "run"
    assert train(workspace["data"], workspace["config"], run) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{run / 'model.safetensors'}: cannot write: No space left on device" in line
    assert line.endswith(f"the checkpoints are kept: make room, then ddmr export {run}")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    resumed = tmp_path / "resumed"  # its model file of before is replaced by export
    shutil.copytree(workspace["trained"], resumed)
    assert resume(workspace, resumed, "--max-steps", str(STEPS + 1)) == 2
    assert one_line(capsys.readouterr().err).endswith(f"ddmr export {resumed} --overwrite")


def test_a_log_file_that_cannot_be_written_ends_training_in_one_line(workspace, tmp_path,
                                                                     capsys, monkeypatch):
    """Item 21: the trainer's other writers (the CSV log here) raised a bare OSError on a
    full disk (a traceback); now one line naming the file, the checkpoints kept."""
    import errno

    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    def full_disk(writer):
        raise OSError(errno.ENOSPC, "No space left on device", writer.metrics_file_path)

    monkeypatch.setattr(ExperimentWriter, "save", full_disk)
    run = tmp_path / "run"
    assert train(workspace["data"], workspace["config"], run) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"ddmr train: error: {run / 'logs' / 'run00' / 'metrics.csv'}: "
                           "cannot write: No space left on device"), line


def test_export_onto_a_full_disk_is_one_line_and_writes_nothing(workspace, tmp_path, capsys):
    """Item 21: safetensors' writer raised its own error type (a traceback); with room for
    the model but not its card copy, the model was left behind under a message saying
    nothing was written. Now one line, and neither file."""
    model_bytes = (workspace["trained"] / "model.safetensors").stat().st_size
    page = 4096
    for leave in (2 * page, -(-model_bytes // page) * page + page):
        with tmpfs(tmp_path / "disk", "1M") as disk:
            fill(disk, leave)
            out = disk / "m.safetensors"
            status = main(["export", str(workspace["trained"]), "-o", str(out)])
            line = one_line(capsys.readouterr().err, "export")
            assert status == 2
            assert line.startswith(f"ddmr export: error: {out}: cannot write: No space left "
                                   "on device"), (leave, line)
            assert sorted(p.name for p in disk.iterdir()) == ["filler"], leave
