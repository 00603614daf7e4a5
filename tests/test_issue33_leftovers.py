"""Issue 33, what was left over: one demo at a time in a demo folder (a second
``--overwrite`` deleted the folder of a running one), ``export`` of a corrupt run.json,
a profile's input_size too small for its network."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import ddmr.demo
from bad_input_cases import tiny_config
from ddmr.cli import main
from ddmr.errors import ConfigError
from ddmr.train.profiles import get_profile
from train_helpers import make_dataset

# -- one demo at a time ------------------------------------------------------------------------

#: a first ``ddmr demo`` whose experiment waits (as a long step does) once it has begun
FIRST_DEMO = """
import sys, time
from pathlib import Path
import ddmr.demo
from ddmr.cli import main

def waiting(self):
    Path(sys.argv[1]).write_text("running")
    time.sleep(120)

ddmr.demo.Demo.brain = waiting
sys.exit(main(["demo", "--quick", "-o", sys.argv[2]]))
"""


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("overwrite", [True, False])
def test_a_second_demo_of_a_folder_is_refused_touching_nothing(tmp_path, monkeypatch, capsys,
                                                                overwrite):
    """A second ``ddmr demo --overwrite`` deleted the folder a first demo was working in
    (and without it, both wrote the same steps). Now the first holds the folder; the second
    stops in one line, exit 2, the folder byte for byte as it was; once the first has
    ended, a demo runs there again."""
    folder = tmp_path / "demo"
    (folder / "brain").mkdir(parents=True)
    (folder / "demo.json").write_text(json.dumps({"experiments": {}}))
    (folder / "brain" / "done.txt").write_text("a finished step")
    before = _contents(folder)
    ready = tmp_path / "ready"
    first = subprocess.Popen([sys.executable, "-c", FIRST_DEMO, str(ready), str(folder)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    ran: list[str] = []
    monkeypatch.setattr(ddmr.demo.Demo, "brain", lambda self: ran.append("brain"))
    monkeypatch.setattr(ddmr.demo.Demo, "report", lambda self: self.folder / "report.html")
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        capsys.readouterr()
        argv = ["demo", "--quick", "-o", str(folder)] + (["--overwrite"] if overwrite else [])
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ddmr demo: error: {folder.resolve()}: another ddmr process is "
                       "writing this output now (wait for it, or choose another output)"]
        assert ran == []
        assert _contents(folder) == before
        assert first.poll() is None  # the first demo goes on
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert main(argv) == 0  # the first released the folder
    assert ran == ["brain"]


# -- export of a run whose run.json is corrupt ---------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Prepared data and a run of a few 16^3 rigid steps (seconds)."""
    root = tmp_path_factory.mktemp("issue33_leftovers")
    data = make_dataset(root, n=5, size=16)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(), "input_size": [16, 16, 16],
                                      "max_steps": 2, "augmentation": {"nonrigid": False}}))
    assert main(["train", "--design", "BL-N", "--data", str(data), "--config", str(config),
                 "--no-progress", "-o", str(root / "run")]) == 0
    return {"data": data, "config": config, "run": root / "run"}


@pytest.mark.parametrize("content", [b"{\"data\": ", b"[1, 2]", b"\xff\xfe not text"],
                         ids=["truncated", "not-a-record", "not-utf8"])
def test_export_of_a_run_with_a_corrupt_run_json_is_one_line(trained, tmp_path, capsys,
                                                              content):
    """json.loads of run.json was unguarded: a traceback. Now one line naming the file and
    what to do, exit 2, nothing written; doing it (delete it, pass --data) exports."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "run.json").write_bytes(content)
    out = tmp_path / "exported.safetensors"
    capsys.readouterr()
    assert main(["export", str(run), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ddmr export: error: {run / 'run.json'}: "), lines[0]
    assert lines[0].endswith("restore it, or delete it and pass --data (the model card then "
                             "lacks the run's command and fine-tuning record)"), lines[0]
    assert not out.exists() and not list(tmp_path.glob(".exported*"))
    (run / "run.json").unlink()
    assert main(["export", str(run), "-o", str(out), "--data", str(trained["data"])]) == 0
    assert out.is_file()


# -- a training profile's input_size too small for its network ---------------------------------


def test_a_profile_input_size_below_the_networks_levels_is_refused():
    """TrainingProfile took an input_size of 2 for any network; training then failed late
    (in the network, or the affine stage that pools by 4). Refused when made, naming the
    field, by the rule that model cards are checked with."""
    cpu = get_profile("cpu")  # 4 encoder levels: at least 16
    with pytest.raises(ConfigError, match=r"^input_size \[8, 8, 8\] is too small for its "
                       r"network \(4 encoder levels, each halving the grid\): each size must "
                       r"be at least 16$"):
        cpu.replace(input_size=(8, 8, 8))
    assert cpu.replace(input_size=(16, 16, 16)).input_size == (16, 16, 16)
    small = {"encoder": [4], "head": [4]}  # 1 level: 2, but its affine stage needs 4
    with pytest.raises(ConfigError, match=r"affine stage\): each size must be at least 4$"):
        get_profile("cpu", overrides={"unet": small, "input_size": [2, 2, 2]})
    assert get_profile("cpu", overrides={"unet": small, "input_size": [2, 2, 2],
                                         "prealign": False}).input_size == (2, 2, 2)
    with pytest.raises(ConfigError, match=r"input_size \[24, 24, 24\] is not a multiple of 16"):
        cpu.replace(input_size=(24, 24, 24), unet=dataclasses.replace(cpu.unet, pad_input=False))


def test_train_with_a_too_small_input_size_is_one_line_before_anything(trained, tmp_path,
                                                                     capsys):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(), "input_size": [2, 2, 2]}))
    out = tmp_path / "run"
    capsys.readouterr()
    status = main(["train", "--design", "BL-N", "--data", str(trained["data"]), "--config",
                   str(config), "--no-progress", "-o", str(out)])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ddmr train: error: ") and "input_size [2, 2, 2] is too small" \
        in lines[0], lines[0]
    assert not out.exists()
