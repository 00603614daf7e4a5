"""The inter-subject protocol (issue 21): ordered pairs of different people on their own
grids, scored in world space by every method, with landmark TRE."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ddmr.cli import main
from ddmr.data.cohort import sample_cohort_dir
from ddmr.evaluate.inter import landmark_tre
from ddmr.evaluate.pairs import PairSet
from ddmr.spatial.grid import Geometry

ROOT = sample_cohort_dir()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inter")
    assert main(["prepare", str(ROOT), "-o", str(folder / "prep"), "--size", "32",
                 "--spacing", "6", "--split-file", str(ROOT / "split.json"),
                 "--no-progress"]) == 0
    return folder


def test_pairs_are_every_ordered_pair_of_different_subjects(prepared):
    assert main(["pairs", "--data", str(prepared / "prep"), "--pairing", "inter-subject",
                 "-o", str(prepared / "test-pairs"), "--no-progress"]) == 0
    assert main(["pairs", "--data", str(prepared / "prep"), "--pairing", "inter-subject",
                 "--split", "all", "-o", str(prepared / "all-pairs"), "--no-progress"]) == 0
    test = PairSet(prepared / "test-pairs")
    everything = PairSet(prepared / "all-pairs")
    assert test.mode == "inter-subject" and len(test) == 2 and len(everything) == 30
    subjects = {(p["fixed"], p["moving"]) for p in everything.index["pairs"]}
    assert len(subjects) == 30 and all(f != m for f, m in subjects)
    pair = test[0]
    # each subject on its own native grid (the bundled files' headers), not a shared one
    assert pair.fixed.shape == (96, 96, 96)
    assert not np.allclose(pair.fixed_geometry.affine, pair.moving_geometry.affine)
    assert pair.fixed_labels is not None and pair.fixed_labels.dtype == np.uint8


def test_landmark_tre_of_a_known_translation():
    geometry = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (10, 10, 10))
    shift = np.array([1.0, -2.0, 0.5])
    field = np.broadcast_to(shift[:, None, None, None], (3, 10, 10, 10)).astype(np.float32)
    fixed = {"a": np.array([4.0, 4.0, 4.0]), "b": np.array([8.0, 6.0, 10.0])}
    moving = {"a": fixed["a"] + shift, "b": fixed["b"] + shift + np.array([3.0, 0, 4.0]),
              "c": np.zeros(3)}
    assert landmark_tre(fixed, moving, field, geometry) == pytest.approx(2.5)
    assert np.isnan(landmark_tre(fixed, {"z": np.zeros(3)}, field, geometry))


def _centroid_landmarks(folder, subject: str) -> None:
    from ddmr.io.images import load_labels

    labels, geometry = load_labels(ROOT / "labels" / f"{subject}.nii.gz")
    with open(folder / f"{subject}.csv", "w") as handle:
        handle.write("id,x_ras,y_ras,z_ras\n")
        for value in range(1, 17):
            index = np.argwhere(labels == value).mean(axis=0)
            x, y, z = geometry.index_to_world(index)
            handle.write(f"label{value},{x},{y},{z}\n")


def test_evaluate_scores_inter_subject_pairs_in_world_space(prepared, tmp_path):
    if not (prepared / "test-pairs").exists():
        test_pairs_are_every_ordered_pair_of_different_subjects(prepared)
    landmarks = tmp_path / "landmarks"
    landmarks.mkdir()
    for subject in ("pycortex-s1", "itk-kmeans"):
        _centroid_landmarks(landmarks, subject)
    out = tmp_path / "results"
    assert main(["evaluate", "--stored-pairs", str(prepared / "test-pairs"), "--baselines",
                 "none,engine", "--engine-iterations", "30,15,0", "--landmarks",
                 str(landmarks), "-o", str(out), "--no-progress"]) == 0
    results = pd.read_csv(out / "per_pair.csv")
    assert set(results["method"]) == {"none", "engine"}
    none = results[results["method"] == "none"]
    engine = results[results["method"] == "engine"]
    # the headers put the heads ~190 mm apart: nothing overlaps until registration
    assert (none["dsc"] < 0.05).all() and (none["landmark_tre"] > 100).all()
    assert (engine["dsc"] > 0.7).all() and (engine["landmark_tre"] < 4.0).all()
    assert (engine["folding"] < 0.01).all()
    assert json.loads((prepared / "test-pairs" / "pairs.json").read_text())["mode"] \
        == "inter-subject"
