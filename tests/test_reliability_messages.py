"""Issue 19: options that ask for impossible memory (defect 8), a report that fails part
way (15) and the messages of defect 16 that live outside the bad-input matrix."""

from __future__ import annotations

import numpy as np
import pytest

import ddmr.commands.designs
from ddmr.cli import main
from ddmr.io.images import save_image
from ddmr.spatial.grid import Geometry
from train_helpers import make_dataset


def one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ddmr {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("messages"), n=5, size=16)


def test_a_tps_grid_that_cannot_fit_in_memory_is_refused_before_allocating(data, tmp_path,
                                                                          capsys):
    """Defect 8: ``augment --tps-grid 2000`` (192 GB) and ``pairs --tps-grid 3000``
    (648 GB) ended in a RuntimeError traceback; now one line naming the option."""
    image = tmp_path / "image.nii.gz"
    rng = np.random.default_rng(0)
    save_image(image, rng.random((16, 16, 16)), Geometry(np.diag([2.0, 2.0, 2.0, 1.0]),
                                                         (16, 16, 16)))
    runs = {"augment": ["augment", str(image), "--tps-grid", "2000", "-o",
                        str(tmp_path / "aug")],
            "pairs": ["pairs", "--data", str(data), "--n", "1", "--tps-grid", "3000",
                      "--no-progress", "-o", str(tmp_path / "pairs")]}
    for command, argv in runs.items():
        assert main(argv) == 2
        line = one_line(capsys.readouterr().err, command)
        grid = argv[argv.index("--tps-grid") + 1]
        assert f"error: --tps-grid {grid}: a thin-plate spline of {grid}^3 control" in line
        assert "GB is available" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.nii.gz"]


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough "
                 "memory: you tried to allocate 1288490188800 bytes."),
    MemoryError(),
])
def test_out_of_memory_anywhere_is_one_line(monkeypatch, capsys, error):
    """Defect 8: torch's out-of-memory RuntimeError reaches the CLI's handler."""
    import torch

    def run(args):
        raise error

    monkeypatch.setattr(ddmr.commands.designs, "run", run)
    assert main(["designs"]) == 2
    line = one_line(capsys.readouterr().err, "designs")
    assert "out of memory" in line
    monkeypatch.setattr(ddmr.commands.designs, "run",
                        lambda args: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA")))
    assert main(["designs"]) == 2
    assert "out of memory" in one_line(capsys.readouterr().err, "designs")


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch):
    def run(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ddmr.commands.designs, "run", run)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["designs"])


def test_stats_on_a_text_column_is_refused(tmp_path, capsys):
    """Defect 16: it exited 0 with 'not computed'."""
    (tmp_path / "per_pair.csv").write_text(
        "pair,method,tre,note\n0,a,1.0,x\n1,a,2.0,y\n0,b,1.5,x\n1,b,2.5,z\n")
    assert main(["stats", str(tmp_path), "--metric", "note"]) == 2
    line = one_line(capsys.readouterr().err, "stats")
    assert "column 'note' is not numeric (e.g. 'x')" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_pair.csv"]


def test_report_inputs_are_checked_before_anything_is_written(tmp_path, capsys):
    """Defect 15: ``report nosuch -o r.html`` left an empty r_files/ that blocked the next
    report; defect 16: ``--runs`` accepted a folder that is not a run."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "per_pair.csv").write_text("pair,method,tre\n0,a,1.0\n1,a,2.0\n")
    (tmp_path / "not_a_run").mkdir()
    cases = [(["nosuch"], "nosuch: not found (run ddmr evaluate first)"),
             ([str(tmp_path / "results"), "--runs", str(tmp_path / "not_a_run")],
              "not_a_run: not a training run folder")]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, problem in cases:
        assert main(["report", *argv, "--overlay-pairs", "0", "-o",
                     str(tmp_path / "r.html")]) == 2
        assert problem in one_line(capsys.readouterr().err, "report")
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert main(["report", str(tmp_path / "results"), "--overlay-pairs", "0", "-o",
                 str(tmp_path / "r.html")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*before, "r.html", "r.md", "r_files"])
