"""The bundled real abdominal CTs (issue 23): Hounsfield units on their own headers,
labels that lie on the organs, provenance, and ``ddmr prepare`` with the paper's CT
window and liver crop."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from ddmr.data import cohort
from ddmr.data.cohort import cohort_ids, cohort_label_names, cohort_metadata, sample_ct_dir
from ddmr.prepare.dataset import prepare_dataset
from ddmr.prepare.recipe import PrepareOptions

LIVER = 5


@pytest.fixture(scope="module")
def scans() -> dict[str, tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    root = sample_ct_dir()
    return {sid: (nib.load(root / "images" / f"{sid}.nii.gz"),
                  nib.load(root / "labels" / f"{sid}.nii.gz")) for sid in cohort_ids("ct")}


def test_two_real_scans_with_their_labels_on_the_same_grid(scans):
    assert len(scans) == 2
    for sid, (image, labels) in scans.items():
        assert image.shape == labels.shape, sid
        assert np.allclose(image.affine, labels.affine), sid
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S"), sid
        assert np.asarray(image.dataobj).dtype == np.int16, sid
    pelvis = scans["totalseg-abdomen-pelvis"]
    upper = scans["totalseg-upper-abdomen"]
    # two different scanners' headers: the two scans lie far apart in world space
    assert np.linalg.norm(pelvis[0].affine[:3, 3] - upper[0].affine[:3, 3]) > 300


def test_labels_lie_on_the_organs(scans):
    """HU inside each organ is what that tissue reads on CT (a flipped or shifted label
    map would put the liver on fat, air or bone)."""
    names = {v: k for k, v in cohort_label_names("ct").items()}
    for sid, (image, labels) in scans.items():
        hu = np.asarray(image.dataobj, np.float32)
        lab = np.asarray(labels.dataobj)
        assert 20 < np.median(hu[lab == LIVER]) < 200, sid  # liver, with or without contrast
        assert np.percentile(hu[lab == 0], 10) < -900, sid  # air around the body
        vertebra = np.isin(lab, [names[n] for n in names if n.startswith("vertebrae_")])
        assert np.median(hu[vertebra]) > 150, sid  # bone
        # the liver is on the subject's right (+x in RAS), the spleen on the left
        liver, spleen = (image.affine @ [*np.argwhere(mask).mean(0), 1]
                         for mask in (lab == LIVER, lab == names["spleen"]))
        assert liver[0] > spleen[0], sid


def test_metadata_names_every_label_and_the_source():
    meta = cohort_metadata("ct")
    names = cohort_label_names("ct")
    assert names[LIVER] == "liver"
    for subject in meta["subjects"]:
        lab = np.asarray(nib.load(sample_ct_dir() / subject["labels"]).dataobj)
        assert set(np.unique(lab).tolist()) - {0} <= set(names), subject["id"]
        assert subject["source"]["package"] == "totalsegmentator"
        assert len(subject["source"]["sha256"]) >= 2
    licences = (sample_ct_dir().parent / "LICENSES.md").read_text()
    assert "TotalSegmentator" in licences and "Apache" in licences
    assert "not manual" in meta["description"]
    split = json.loads((sample_ct_dir() / "split.json").read_text())
    assert sorted(split["test"]) == sorted(cohort_ids("ct"))


def _prepared(root, out, **options) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    options = PrepareOptions(size=(32, 32, 32), spacing=3.0, ct_window=(-100.0, 400.0),
                             merge_labels=str(root / "liver-labels.json"),
                             split_file=str(root / "split.json"), **options)
    prepare_dataset(root, out, options, progress=False)
    with h5py.File(out / "dataset.h5") as h5:
        return {sid: (h5[sid]["image"][()], h5[sid]["labels"][()]) for sid in cohort_ids("ct")}


def test_prepare_with_ct_window_liver_crop_and_merged_labels(tmp_path, scans):
    root = sample_ct_dir()
    cropped = _prepared(root, tmp_path / "cropped", crop_labels=(1,))
    whole = _prepared(root, tmp_path / "whole")
    for sid, (image, labels) in cropped.items():
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert set(np.unique(labels).tolist()) == {0, 1, 2}, sid
        liver = labels == 1
        # the crop around the liver (10 mm margin) gives it a larger share of the grid
        assert liver.mean() > 1.5 * (whole[sid][1] == 1).mean(), sid
        # the window maps -100..400 HU onto 0..1: the liver reads (HU + 100) / 500
        hu, native = (np.asarray(x.dataobj) for x in scans[sid])
        expected = (np.median(hu[native == LIVER]) + 100) / 500
        assert np.median(image[liver]) == pytest.approx(expected, abs=0.03), sid


def test_zipped_installation_copies_every_file(monkeypatch, tmp_path):
    """Without a plain package folder the data is copied out, split and merge map too."""
    real = cohort._root

    class Wrapped:  # a Traversable that is not a Path
        def __init__(self, path):
            self.path = path

        def iterdir(self):
            return (Wrapped(p) for p in self.path.iterdir())

        def is_dir(self):
            return self.path.is_dir()

        def read_bytes(self):
            return self.path.read_bytes()

        @property
        def name(self):
            return self.path.name

    monkeypatch.setattr(cohort, "_root", lambda name="brain": Wrapped(real(name)))
    cohort._extracted.cache_clear()
    try:
        copied = cohort.bundled_dir("ct")
        for name in ("cohort.json", "split.json", "liver-labels.json"):
            assert (copied / name).read_bytes() == (real("ct") / name).read_bytes()
        assert sorted(p.name for p in (copied / "images").iterdir()) == \
            sorted(f"{sid}.nii.gz" for sid in cohort_ids("ct"))
    finally:
        cohort._extracted.cache_clear()
