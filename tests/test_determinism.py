"""Determinism on CPU (issue 10): the same seed gives bit-identical stored pairs, also in
a new process, and the same pairs and model give bit-identical metrics. (Pairs repeated
within one process: test_pairs.py; training runs: test_train.py; ANTs is bit for bit only
with one ITK thread, see ddmr.baselines.ants.AntsSettings.)"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from bad_input_cases import small_model
from ddmr import metrics
from ddmr.cli import main
from ddmr.evaluate.pairs import PairSet
from train_helpers import make_dataset

PAIRS_ARGS = ["--n", "2", "--seed", "11", "--tps-grid", "4", "--max-translation", "3",
              "--max-tps", "2"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    prepared = make_dataset(root, n=5, size=16)
    assert main(["pairs", "--data", str(prepared), *PAIRS_ARGS, "-o", str(root / "pairs")]) == 0
    return root, prepared, small_model(root / "model.safetensors")


def arrays(folder) -> dict[str, bytes]:
    """Every array and attribute of a pairs.h5, as bytes."""
    out = {}
    with h5py.File(folder / "pairs.h5", "r") as h5:
        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                out[name] = item[()].tobytes()
            for key, value in item.attrs.items():
                out[f"{name}@{key}"] = np.asarray(value).tobytes()
        h5.visititems(visit)
    return out


@pytest.mark.slow
def test_same_seed_gives_bit_identical_pairs_in_a_new_process(workspace, tmp_path):
    root, prepared, _ = workspace
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # the thread count this suite uses
    result = subprocess.run([sys.executable, "-m", "ddmr", "pairs", "--data", str(prepared),
                             *PAIRS_ARGS, "-o", str(tmp_path / "again")], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    first, again = arrays(root / "pairs"), arrays(tmp_path / "again")
    assert sorted(first) == sorted(again) and len(first) > 10
    assert [k for k in first if first[k] != again[k]] == []


def test_same_pairs_and_model_give_bit_identical_metrics(workspace, tmp_path):
    root, _, model = workspace
    tables = []
    for name in ("a", "b"):
        assert main(["evaluate", "--stored-pairs", str(root / "pairs"), "--models", str(model),
                     "--baselines", "none", "--no-progress", "-o", str(tmp_path / name)]) == 0
        tables.append(pd.read_csv(tmp_path / name / "per_pair.csv").drop(columns="seconds"))
    assert len(tables[0]) == 4 and tables[0]["dsc"].notna().all()
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


def test_pair_metrics_repeat_bit_for_bit(workspace):
    root, _, _ = workspace
    pair = PairSet(root / "pairs")[0]
    runs = [metrics.pair_metrics(pair.fixed, pair.moving, pair.spacing, pair.displacement,
                                 pair.fixed_labels, pair.moving_labels,
                                 true_displacement=pair.displacement) for _ in range(2)]
    assert runs[0].keys() == runs[1].keys()
    for key, value in runs[0].items():
        other = runs[1][key]
        assert np.float64(value).tobytes() == np.float64(other).tobytes(), key
