"""Stored test pairs: contents, convention, reproducibility, atomic and refusing writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmr.cli import main
from ddmr.evaluate.pairs import PairSet, read_index
from ddmr.spatial.warp import warp_labels
from train_helpers import make_dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("pairs"), n=5)


def make(prepared, out, seed=7, *extra):
    return main(["pairs", "--data", str(prepared), "--split", "test", "--n", "3", "--seed",
                 str(seed), "-o", str(out), "--max-translation", "4", "--max-rotation", "8",
                 "--no-tps", *extra])


def test_pairs_are_stored_and_reproducible(prepared, tmp_path):
    assert make(prepared, tmp_path / "a") == 0
    assert make(prepared, tmp_path / "b") == 0
    assert make(prepared, tmp_path / "c", 8) == 0
    a, b, c = (PairSet(tmp_path / k) for k in "abc")
    assert len(a) == 3 and read_index(tmp_path / "a")["augmentation"]["max_translation"] == 4
    for pa, pb in zip(a, b, strict=True):
        for key in ("fixed", "moving", "displacement", "fixed_labels", "moving_labels"):
            x, y = getattr(pa, key), getattr(pb, key)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        assert pa.parameters == pb.parameters and pa.subject == pb.subject
    assert not np.array_equal(a[0].moving, c[0].moving)
    pair = a[0]
    assert pair.fixed.shape == (24, 24, 24) and pair.displacement.shape == (3, 24, 24, 24)
    assert pair.fixed_labels.dtype == np.uint8 and pair.spacing == (2.0, 2.0, 2.0)
    assert pair.affine.shape == (4, 4) and "rotation" in pair.parameters
    import h5py

    with h5py.File(tmp_path / "a" / "pairs.h5", "r") as h5:
        assert tuple(h5[pair.name].attrs["native_shape"]) == (24, 24, 24)
    # the ground truth pulls the moving labels back onto the fixed ones
    warped = warp_labels(torch.from_numpy(pair.moving_labels)[None, None],
                         torch.from_numpy(pair.displacement)[None])[0, 0].numpy()
    fg = pair.fixed_labels > 0
    before = (fg & (pair.moving_labels > 0)).sum() / fg.sum()
    after = (fg & (warped > 0)).sum() / fg.sum()
    assert after > 0.9 and after >= before


def test_existing_output_is_refused_unless_overwrite(prepared, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    assert make(prepared, out) == 2
    assert make(prepared, out, 7, "--overwrite") == 0
    assert len(PairSet(out)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary left behind
    assert main(["pairs", "--data", str(prepared), "--n", "0", "-o", str(tmp_path / "z")]) == 2
    assert main(["pairs", "--data", str(tmp_path / "nothing"), "--n", "1",
                 "-o", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()


def test_nonrigid_pairs_are_bit_identical(prepared, tmp_path):
    for name in "ab":
        assert main(["pairs", "--data", str(prepared), "--n", "1", "--seed", "5", "--tps-grid",
                     "4", "--max-translation", "2", "-o", str(tmp_path / name)]) == 0
    a, b = PairSet(tmp_path / "a")[0], PairSet(tmp_path / "b")[0]
    assert a.parameters["tps_displacements"] is not None
    for key in ("fixed", "moving", "displacement", "moving_labels"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes()
