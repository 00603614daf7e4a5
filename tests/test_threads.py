"""One thread setting for torch, BLAS and DDMR's own pools (issue 18)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ddmr import threads
from ddmr.errors import ConfigError


def test_default_respects_affinity_and_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # more than the process may use: capped
    assert threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a number: ignored
    assert threads.default_threads() == 3


def test_use_threads_sets_torch_blas_pools_and_children():
    code = ("import os, torch; from threadpoolctl import threadpool_info; "
            "from ddmr import threads; from ddmr.spatial import resample; "
            "threads.use_threads(1); "
            "assert torch.get_num_threads() == 1; assert resample._workers() == 1; "
            "assert all(p['num_threads'] == 1 for p in threadpool_info()), threadpool_info(); "
            "assert os.environ['OMP_NUM_THREADS'] == '1'; "
            "assert os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'] == '1'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_bad_thread_counts_are_refused(value):
    with pytest.raises(ConfigError, match="--threads"):
        threads.use_threads(value)


def test_register_refuses_zero_threads_in_one_line(tmp_path, capsys):
    from ddmr.cli import main

    status = main(["register", "--fixed", "f.nii.gz", "--moving", "m.nii.gz", "--threads",
                   "0", "-o", str(tmp_path / "out")])
    assert status == 2
    assert capsys.readouterr().err.strip() == \
        "ddmr register: error: --threads 0: expected a whole number >= 1"
    assert not (tmp_path / "out").exists()
