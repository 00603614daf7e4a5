"""The bundled brain cohort: content, geometry, labels, packaging and licences."""

from __future__ import annotations

import itertools
import json
from importlib import resources

import nibabel as nib
import numpy as np
import pytest

from ddmr.data.cohort import (
    Subject,
    cohort_ids,
    cohort_label_names,
    cohort_metadata,
    cohort_split,
    copy_sample_cohort,
    load_subject,
    sample_cohort,
    sample_cohort_dir,
)
from ddmr.errors import InputError


@pytest.fixture(scope="module")
def cohort() -> list[Subject]:
    return sample_cohort()


def test_at_least_six_subjects(cohort: list[Subject]) -> None:
    assert len(cohort) >= 6
    assert len({s.id for s in cohort}) == len(cohort)
    kinds = [s.metadata["kind"] for s in cohort]
    assert kinds.count("individual") >= 3


def test_subjects_are_distinct(cohort: list[Subject]) -> None:
    for a, b in itertools.combinations(cohort, 2):
        r = np.corrcoef(a.image.ravel(), b.image.ravel())[0, 1]
        assert r < 0.99, (a.id, b.id, r)


def test_geometry(cohort: list[Subject]) -> None:
    for s in cohort:
        assert s.image.shape == s.labels.shape == (96, 96, 96)
        assert s.image.dtype == np.float32 and s.labels.dtype == np.uint8
        assert s.spacing == (2.0, 2.0, 2.0)
        assert s.affine.shape == (4, 4)
        assert np.allclose(s.affine[:3, :3], np.diag([2.0, 2.0, 2.0]))  # RAS, no rotation
        assert nib.aff2axcodes(s.affine) == ("R", "A", "S")
        # the brain sits in the middle of the field of view
        centre = np.argwhere(s.labels > 0).mean(0)
        assert np.all(np.abs(centre - 47.5) < 8), (s.id, centre)
        assert not s.labels[[0, -1]].any() and not s.labels[:, [0, -1]].any()
        assert not s.labels[:, :, [0, -1]].any()


def test_intensities(cohort: list[Subject]) -> None:
    for s in cohort:
        assert s.image.min() >= 0.0 and s.image.max() <= 1.0
        assert s.image.max() > 0.95
        assert np.all(s.image[s.labels == 0] == 0)  # skull-stripped: nothing outside the brain
        assert (s.image[s.labels > 0] > 0).mean() > 0.98


def test_label_sets(cohort: list[Subject]) -> None:
    names = cohort_label_names()
    assert names[0] == "background" and len(names) >= 6
    expected = set(names)
    for s in cohort:
        assert set(np.unique(s.labels).tolist()) == expected, s.id
        volumes = np.bincount(s.labels.ravel(), minlength=len(names)) * 8 / 1000  # ml
        assert 900 < volumes[1:].sum() < 2000, (s.id, volumes[1:].sum())
        assert volumes[1:].min() > 0.2, (s.id, volumes)


def test_label_contrast(cohort: list[Subject]) -> None:
    """Labels sit on the right tissue: WM > GM > CSF in T1, and labels cover the brain."""
    names = {v: k for k, v in cohort_label_names().items()}
    for s in cohort:
        med = {n: np.median(s.image[s.labels == names[n]]) for n in ("CSF", "grey matter",
                                                                       "white matter")}
        assert med["white matter"] > med["grey matter"] > med["CSF"], (s.id, med)
        bright = s.image > 0.4
        assert (s.labels[bright] > 0).mean() > 0.97, s.id
        for struct in ("left thalamus", "right putamen"):
            inside = np.median(s.image[s.labels == names[struct]])
            assert inside > med["CSF"] + 0.1, (s.id, struct)


def test_left_right(cohort: list[Subject]) -> None:
    names = {v: k for k, v in cohort_label_names().items()}
    for s in cohort:
        x_left = np.argwhere(s.labels == names["left putamen"])[:, 0].mean()
        x_right = np.argwhere(s.labels == names["right putamen"])[:, 0].mean()
        assert x_right > x_left + 10, s.id  # RAS: +x is the subject's right


def test_installed_resources_and_folder_layout() -> None:
    root = resources.files("ddmr.data") / "sample" / "brain"
    assert (root / "cohort.json").is_file()
    folder = sample_cohort_dir()
    images = sorted(p.name for p in (folder / "images").glob("*.nii.gz"))
    labels = sorted(p.name for p in (folder / "labels").glob("*.nii.gz"))
    assert images == labels == sorted(f"{i}.nii.gz" for i in cohort_ids())
    img = nib.load(folder / "images" / images[0])
    assert img.get_data_dtype() == np.uint8
    data = img.get_fdata()
    assert data.min() >= 0.0 and data.max() <= 1.0 + 1e-6


def test_split() -> None:
    split = cohort_split()
    assert sorted(i for ids in split.values() for i in ids) == sorted(cohort_ids())
    kinds = {s["id"]: s["kind"] for s in cohort_metadata()["subjects"]}
    assert len(split["test"]) >= 2
    assert all(kinds[i] == "individual" for i in split["test"])
    a, b, c = cohort_split(seed=1), cohort_split(seed=1), cohort_split(seed=2)
    assert a == b
    assert sorted(i for ids in c.values() for i in ids) == sorted(cohort_ids())
    assert not set(a["test"]) & set(a["train"])


def test_metadata_and_licences() -> None:
    meta = cohort_metadata()
    licences = (resources.files("ddmr.data") / "sample" / "LICENSES.md").read_text()
    for rec in meta["subjects"]:
        src = rec["source"]
        for key in ("package", "version", "file", "licence", "sha256"):
            assert src[key], (rec["id"], key)
        assert rec["processing"]
        assert rec["split"] in ("train", "val", "test")
        assert f"| `{rec['id']}` |" in licences, rec["id"]
    assert json.loads(json.dumps(meta)) == meta


def test_copy_and_errors(tmp_path) -> None:
    out = copy_sample_cohort(tmp_path / "c")
    assert len(list((out / "images").glob("*.nii.gz"))) == len(cohort_ids())
    with pytest.raises(InputError):
        load_subject("no-such-head")
