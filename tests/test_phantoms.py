"""Synthetic abdominal CT phantoms: HU ranges, label geometry, seeding, NIfTI output."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ddmr.data.phantoms import TISSUES, Phantom, make_ct_phantom, write_phantom_cohort


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    return [make_ct_phantom(seed) for seed in (0, 1)]


def _core(mask: np.ndarray) -> np.ndarray:
    """Voxels at least one voxel away from the tissue's border (blur-free)."""
    return ndimage.binary_erosion(mask, iterations=1)


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [
        ("air", -1030, -970),
        ("fat", -130, -70),
        ("muscle", 20, 80),
        ("liver", 95, 135),
        ("bone", 350, 1000),
        ("lung", -900, -800),
        ("kidney", 130, 215),
    ],
)
def test_tissue_hu_ranges(phantoms: list[Phantom], tissue: str, lo: float, hi: float) -> None:
    for ph in phantoms:
        core = _core(ph.tissue == TISSUES[tissue])
        assert core.sum() > 20, tissue
        med = float(np.median(ph.image_hu[core]))
        assert lo <= med <= hi, (tissue, med)


def test_vessels_brighter_than_liver(phantoms: list[Phantom]) -> None:
    for ph in phantoms:
        liver = np.median(ph.image_hu[_core(ph.labels == 1)])
        vessels = ph.image_hu[ph.labels == 2]
        # thin tubes lose contrast to the blur; their bright cores reach 180-250 HU
        assert 180 <= np.percentile(vessels, 90) <= 280
        assert np.median(vessels) > liver + 30


def test_labels_geometry(phantoms: list[Phantom]) -> None:
    for ph in phantoms:
        assert ph.image_hu.dtype == np.float32 and ph.labels.dtype == np.uint8
        assert ph.image_hu.shape == ph.labels.shape == (96, 96, 96)
        assert set(np.unique(ph.labels)) == {0, 1, 2}
        body = ph.tissue > 0
        assert np.all(body[ph.labels > 0]), "labels outside the body"
        # vessels run inside the liver, not along its surface
        envelope = ph.labels > 0
        inner = ndimage.binary_erosion(envelope, iterations=1)
        vessels = ph.labels == 2
        assert (inner & vessels).sum() > 0.8 * vessels.sum()
        assert (ph.tissue[vessels] == TISSUES["liver vessels"]).all()
        assert (ph.labels == 2).sum() > 200
        assert (ph.tissue[ph.labels == 1] == TISSUES["liver"]).all()
        # liver on the patient's right (RAS: +x), in the upper abdomen
        centre = nib.affines.apply_affine(ph.affine, np.argwhere(ph.labels > 0).mean(0))
        assert centre[0] > 20 and centre[2] > 0
        # corners are air
        assert ph.image_hu[0, 0, 0] < -950 and ph.image_hu[-1, -1, -1] < -950


def test_liver_volume_plausible(phantoms: list[Phantom]) -> None:
    for ph in phantoms:
        litres = (ph.labels > 0).sum() * np.prod(ph.spacing) / 1e6
        assert 1.0 <= litres <= 2.5, litres
        assert ph.affine[0, 0] == ph.spacing[0] and ph.affine[2, 2] == ph.spacing[2]


def test_seeds(phantoms: list[Phantom]) -> None:
    a, b = phantoms[0].labels > 0, phantoms[1].labels > 0
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice < 0.9, dice
    assert not np.allclose(phantoms[0].image_hu, phantoms[1].image_hu)
    small = {"shape": (48, 48, 40), "spacing": (8.0, 8.0, 7.2)}
    one, two = make_ct_phantom(7, **small), make_ct_phantom(np.random.default_rng(7), **small)
    assert np.array_equal(one.image_hu, two.image_hu)
    assert np.array_equal(one.labels, two.labels)


def test_fast() -> None:
    t = time.perf_counter()
    make_ct_phantom(5)
    assert time.perf_counter() - t < 6.0  # about 1 s on 2 cores; generous under load


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_ct_phantom(0, shape=(96, 96))
    with pytest.raises(ValueError):
        make_ct_phantom(0, spacing=(1.0, 0.0, 1.0))


def test_write_phantom_cohort(tmp_path) -> None:
    ids = write_phantom_cohort(tmp_path, n=2, seed=3, shape=(40, 40, 32), spacing=(9, 9, 9))
    assert ids == ["phantom-000", "phantom-001"]
    for pid in ids:
        img = nib.load(tmp_path / "images" / f"{pid}.nii.gz")
        lab = nib.load(tmp_path / "labels" / f"{pid}.nii.gz")
        assert img.shape == lab.shape == (40, 40, 32)
        assert np.allclose(img.affine, lab.affine)
        assert np.allclose(img.header.get_zooms(), (9, 9, 9))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert np.asanyarray(img.dataobj).dtype == np.int16
        assert np.asanyarray(lab.dataobj).dtype == np.uint8
        assert (np.asanyarray(lab.dataobj) == 1).any()
        hu = img.get_fdata()
        assert hu.min() >= -1024 and hu.max() > 300
    assert not list(tmp_path.rglob(".*tmp*"))
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
    # same seed, same files
    other = tmp_path / "again"
    write_phantom_cohort(other, n=1, seed=3, shape=(40, 40, 32), spacing=(9, 9, 9))
    a = nib.load(tmp_path / "images" / "phantom-000.nii.gz").get_fdata()
    b = nib.load(other / "images" / "phantom-000.nii.gz").get_fdata()
    assert np.array_equal(a, b)
