"""Issue 19, training and export: a diverging run stops at its first non-finite loss and
nothing exports NaN weights (defect 3); --resume refuses other settings (12, 13); a run
that fails before its first checkpoint leaves nothing behind (14); tensorboard is
optional (issue 18); exported model names end in .safetensors (16)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from bad_input_cases import tiny_config
from ddmr.cli import main
from train_helpers import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("reliability_train"), n=5, size=16)


def write_config(folder, **changes):
    """A training configuration of a few 16^3 rigid steps (seconds), with ``changes``."""
    config = {**tiny_config(), "input_size": [16, 16, 16], "max_steps": 2,
              "augmentation": {"nonrigid": False}, **changes}
    path = folder / f"config-{len(list(folder.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(data, config, out, *extra, design="BL-N"):
    return main(["train", "--design", design, "--data", str(data), "--config", str(config),
                 "--no-progress", "-o", str(out), *extra])


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b""
            for p in sorted(folder.rglob("*"))}


def test_a_diverging_run_stops_at_its_first_non_finite_loss(data, tmp_path, capsys):
    """Defect 3: learning_rate 1e6 makes the loss NaN within steps; training stops there
    with one line, writes no model, and every checkpoint it kept has finite weights."""
    run = tmp_path / "run"
    status = train(data, write_config(tmp_path, learning_rate=1e6, max_steps=20), run)
    line = one_line(capsys.readouterr().err)
    assert status == 2
    assert line.startswith(f"ddmr train: error: {run}: training diverged at step ")
    assert "learning_rate 1e+06" in line
    assert not (run / "model.safetensors").exists()
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(checkpoint, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), checkpoint


def test_export_refuses_non_finite_weights_and_pickle_names(data, tmp_path, capsys):
    """Defect 3 (export) and 16 (``export -o m.pt``)."""
    run = tmp_path / "run"
    assert train(data, write_config(tmp_path), run) == 0
    capsys.readouterr()
    assert main(["export", str(run), "-o", str(tmp_path / "m.pt")]) == 2
    assert "must end in .safetensors" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "m.pt").exists()
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("network."))
    checkpoint["state_dict"][name][...] = float("nan")
    torch.save(checkpoint, last)
    assert main(["export", str(run), "--checkpoint", "last",
                 "-o", str(tmp_path / "nan.safetensors")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{last}: the weights have NaN or Inf values" in line
    assert not (tmp_path / "nan.safetensors").exists()


def test_resume_with_other_settings_is_refused_before_anything_is_written(data, tmp_path,
                                                                          capsys):
    """Defects 12 and 13: another --design, another input_size, another dataset; only
    max_steps (and the like) may change. The run folder stays byte for byte as it was."""
    run = tmp_path / "run"
    config = write_config(tmp_path)
    assert train(data, config, run) == 0
    other_data = make_dataset(tmp_path / "other", n=6, size=16)
    capsys.readouterr()
    before = tree(run)
    cases = [
        (["--design", "BL-NS"], config, data, r"design\.name 'BL-N' -> 'BL-NS'"),
        ([], write_config(tmp_path, input_size=[12, 12, 12]), data,
         r"profile\.input_size \[16, 16, 16\] -> \[12, 12, 12\]"),
        ([], config, other_data, f"data '{data.resolve()}' -> '{other_data.resolve()}'"),
    ]
    import re

    for extra, case_config, case_data, problem in cases:
        design = extra[1] if extra else "BL-N"
        status = train(case_data, case_config, run, "--resume", design=design)
        line = one_line(capsys.readouterr().err)
        assert status == 2, line
        assert line.startswith(f"ddmr train: error: {run}: --resume with other settings")
        assert re.search(problem, line), line
        assert tree(run) == before
    assert train(data, config, run, "--resume", "--max-steps", "3") == 0
    assert json.loads((run / "model.json").read_text())["training"]["steps"] == 3


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, capsys):
    """Defect 14: SG-ND on a dataset whose validation subjects have no labels fails when
    the trainer loads them; neither the run folder (run.json, logs/, tensorboard/) nor
    an empty folder given as -o keeps anything, and a rerun is not blocked."""
    import shutil

    data = make_dataset(tmp_path / "partly", n=5, size=16)
    split = json.loads((data / "split.json").read_text())
    import h5py

    with h5py.File(data / "dataset.h5", "a") as h5:
        for ident in split["val"]:
            del h5[ident]["labels"]
            del h5[ident].attrs["label_values"]
    config = write_config(tmp_path)
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        status = train(data, config, out, design="SG-ND")
        err = capsys.readouterr().err
        assert status == 2, err
        assert "Traceback" not in err
        assert (list(out.iterdir()) == []) if out.name == "empty" else not out.exists()
    shutil.rmtree(tmp_path / "empty")


def test_training_without_tensorboard_still_trains(data, tmp_path, monkeypatch, caplog):
    """Issue 18: with neither tensorboard nor tensorboardX importable (a plain
    ``pip install -e .``), training runs with the CSV logger only and says so in the log."""
    import logging

    for name in ("tensorboard", "tensorboardX"):
        monkeypatch.setitem(sys.modules, name, None)  # `import tensorboard` now fails
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="ddmr.train.run"):
        assert train(data, write_config(tmp_path), run) == 0
    assert (run / "model.safetensors").is_file()
    assert not (run / "tensorboard").exists()
    assert (run / "logs" / "run00" / "metrics.csv").is_file()
    assert "tensorboard is not installed" in caplog.text
