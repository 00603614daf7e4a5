"""Atlas label propagation (how the paper labelled IXI), on tiny data with few iterations."""

from __future__ import annotations

import h5py
import numpy as np

from ddmr.data.dataset import subject_geometries, to_native
from ddmr.io.images import save_image, save_labels
from ddmr.prepare.dataset import prepare_dataset
from ddmr.prepare.recipe import PrepareOptions
from test_prepare import make_geometry, make_subject

FAST = dict(atlas_syn_iterations=(20, 10), atlas_affine_iterations=(100, 50))


def test_atlas_labels_subjects_without_labels(tmp_path):
    atlas_geometry = make_geometry(shape=(28, 28, 24), spacing=(2.0, 2.0, 2.0),
                                   angles=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0))
    atlas_image, atlas_labels = make_subject(atlas_geometry, seed=0)
    save_image(tmp_path / "atlas.nii.gz", atlas_image, atlas_geometry)
    save_labels(tmp_path / "atlas_labels.nii.gz", atlas_labels, atlas_geometry)

    root = tmp_path / "IXI"
    root.mkdir()
    truth = {}
    for n, (angles, centre) in enumerate([((6.0, -4.0, 8.0), (10.0, -5.0, 3.0)),
                                          ((-5.0, 7.0, -6.0), (-8.0, 6.0, -4.0))]):
        geometry = make_geometry(shape=(26, 24, 20), spacing=(2.0, 2.3, 2.5),
                                 angles=angles, centre=centre)
        image, labels = make_subject(geometry, seed=n + 1)
        ident = f"IXI00{n + 1}"
        save_image(root / f"{ident}-Guys-0828-T1.nii.gz", image, geometry)
        truth[ident] = labels

    options = PrepareOptions(size=(24, 24, 24), spacing=2.0, layout="ixi",
                             atlas=str(tmp_path / "atlas.nii.gz"),
                             atlas_labels=str(tmp_path / "atlas_labels.nii.gz"), **FAST)
    summary = prepare_dataset(root, tmp_path / "out", options, progress=False)
    assert {s["label_source"] for s in summary["subjects"]} == {"atlas"}
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as h5:
        for ident, labels in truth.items():
            prepared, native = subject_geometries(tmp_path / "out", ident)
            back = to_native(h5[ident]["labels"][()], prepared, native, order=0)
            organ_true, organ = labels > 0, back > 0
            dice = 2 * (organ_true & organ).sum() / (organ_true.sum() + organ.sum())
            assert dice > 0.8, (ident, dice)
            assert set(np.unique(back)) <= {0, 1, 2}
