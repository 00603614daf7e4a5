"""Partial fields of view, CT intensities and label guidance (issue 32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmr.data.cohort import sample_cohort_dir, sample_ct_dir
from ddmr.errors import InputError
from ddmr.io.images import load_image, load_labels
from ddmr.registration.guidance import dice_gradient, make_guide, parse_labels, soft_dice
from ddmr.registration.modality import CT_WINDOW_HU, modality
from ddmr.registration.native import seen_by_moving
from ddmr.registration.qc import Verdict, add_guidance
from ddmr.spatial.grid import Geometry

LIVER, SPLEEN = 5, 1


def ct(name: str = "totalseg-abdomen-pelvis"):
    root = sample_ct_dir()
    image, geometry = load_image(root / "images" / f"{name}.nii.gz")
    labels, _ = load_labels(root / "labels" / f"{name}.nii.gz")
    return image, labels, geometry


def slab(side, first: int, last: int, shift_mm: float):
    """Slices ``first:last`` along k of an RAS scan, its origin moved ``shift_mm`` along S."""
    image, labels, geometry = side
    affine = geometry.affine.copy()
    affine[:3, 3] = geometry.index_to_world(np.array([[0.0, 0.0, first]]))[0]
    affine[2, 3] += shift_mm
    cut = np.s_[:, :, first:last]
    return (np.ascontiguousarray(image[cut]), np.ascontiguousarray(labels[cut]),
            Geometry(affine, image[cut].shape))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_guidance_gradient_is_the_soft_dice_gradient(weighted):
    """The engine's closed-form gradient of the mean soft Dice against autograd's."""
    rng = np.random.default_rng(0)
    fixed = torch.from_numpy(rng.random((3, 6, 7, 8), dtype=np.float32))
    warped = torch.from_numpy(rng.random((3, 6, 7, 8), dtype=np.float32))
    weight = torch.from_numpy((rng.random((6, 7, 8)) > 0.3).astype(np.float32)) \
        if weighted else None
    value, gradient = dice_gradient(fixed, warped, weight)
    probe = warped.clone().requires_grad_(True)
    reference = soft_dice(fixed.reshape(3, -1), probe.reshape(3, -1),
                          None if weight is None else weight.reshape(-1))
    (expected,) = torch.autograd.grad(reference, probe)
    assert value == pytest.approx(float(reference.detach()), rel=1e-5)
    np.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=1e-4, atol=1e-9)


def test_guide_labels_are_checked():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1], labels[2, 2, 2] = 5, 1
    other = labels.copy()
    other[2, 2, 2] = 0
    assert parse_labels("5, 1,5") == (5, 1)
    for text in ("liver", "0", "5,300", ""):
        with pytest.raises(InputError, match="--guide"):
            parse_labels(text)
    assert make_guide(None, labels, other) is None
    assert make_guide((5,), labels, other).labels == (5,)
    with pytest.raises(InputError, match=r"label\(s\) 1 are not in both"):
        make_guide((5, 1), labels, other)
    with pytest.raises(InputError, match="both label maps"):
        make_guide((5,), labels, None)
    with pytest.raises(InputError, match="--guide-weight needs --guide"):
        make_guide(None, labels, other, engine_weight=1.0)
    with pytest.raises(InputError, match="--guide-weight"):
        make_guide((5,), labels, other, engine_weight=-1.0)
    assert make_guide((5,), labels, other, engine_weight=1.0).engine_weight == 1.0


def test_a_ct_gets_the_hu_window_and_an_mr_its_own_percentiles():
    image, _, _ = ct()
    assert modality(image, (0.0, 1.0)).scale == CT_WINDOW_HU
    brain, _ = load_image(sample_cohort_dir() / "images" / "pycortex-s1.nii.gz")
    found = modality(brain, (3.0, 90.0))
    assert (found.kind, found.scale) == ("other", (3.0, 90.0))


def test_seen_by_moving_is_the_moving_grid_seen_point_by_point():
    """Against each voxel's moving point mapped to moving indices one by one, on an
    oblique, anisotropic moving grid."""
    rng = np.random.default_rng(1)
    fixed = Geometry(np.diag([2.0, 2.5, 3.0, 1.0]), (9, 8, 7))
    turn = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag([1.5, 2.0, 1.0])
    shape = (12, 10, 14)
    fixed_centre = fixed.index_to_world(np.array(fixed.shape, float)[None] / 2)[0]
    affine[:3, 3] = fixed_centre - affine[:3, :3] @ np.array(shape, float) / 2 + (4, -3, 2)
    moving = Geometry(affine, shape)
    displacement = rng.normal(scale=4.0, size=(3, *fixed.shape)).astype(np.float32)
    seen = seen_by_moving(displacement, fixed, moving)
    index = np.argwhere(np.ones(fixed.shape, bool))
    points = fixed.index_to_world(index.astype(float)) + displacement.reshape(3, -1).T
    voxels = moving.world_to_index(points)
    expected = np.all((voxels >= -0.5) & (voxels <= np.array(moving.shape) - 0.5), axis=1)
    assert 0.1 < expected.mean() < 0.9
    np.testing.assert_array_equal(seen.reshape(-1), expected)


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["slab->whole", "whole->slab"])
def test_a_partial_field_of_view_is_found_wherever_its_header_puts_it(direction):
    """A 60 mm slab through the liver of the bundled CT, its header moved 800 mm along z,
    against the whole scan (the answer: the slab where it was cut). The body-axis search
    finds it: the affine part within 6 mm of the truth, liver DSC over 0.9 where the
    moving image has data, QC passes (and says the field of view is partial where the
    slab is the moving image)."""
    import ddmr

    whole = ct()
    liver_slices = np.nonzero((whole[1] == LIVER).any(axis=(0, 1)))[0]
    middle = int(liver_slices.mean())
    part = slab(whole, middle - 10, middle + 10, 800.0)
    fixed, moving = (whole, part) if direction == "slab->whole" else (part, whole)
    result = ddmr.register((fixed[0], fixed[2]), (moving[0], moving[2]),
                           (fixed[1], fixed[2]), (moving[1], moving[2]))
    assert result.qc.passed, result.qc.line()
    world = result.summary["affine_prealignment"]["world_affine"]
    assert world["partial_field_of_view"] and world["start"].startswith("along S")
    truth = np.eye(4)
    truth[2, 3] = 800.0 if direction == "slab->whole" else -800.0
    centre = fixed[2].index_to_world(np.array(fixed[2].shape, float)[None] / 2)[0]
    found = np.asarray(world["matrix_ras"]) @ np.append(centre, 1.0)
    assert np.linalg.norm(found[:3] - (truth @ np.append(centre, 1.0))[:3]) < 6.0
    assert result.summary["metrics"]["dsc_per_label"][str(LIVER)] > 0.9
    # QC counts only where the slab has data when the slab is the moving image, and the
    # pictures (overlay.png, qc.html) cut through the slab, not the abdomen's centre
    assert ("partial field of view" in result.qc.line()) == (direction == "slab->whole")
    centre = result.view_centre()
    if direction == "slab->whole":
        slab_z = whole[2].index_to_world(np.array([[0.0, 0.0, middle]]))[0, 2]
        assert abs(centre[2] - slab_z) < 15.0
        from ddmr.registration.native import seen_by_moving

        listed = np.argwhere(seen_by_moving(result.displacement_mm, result.geometry,
                                            result.moving_geometry)).mean(axis=0)
        # QC's regular subsample finds the centre of every voxel the slab shows to within
        # half its stride along each axis
        from ddmr.registration.qc import subsample

        stride = subsample(result.geometry.shape)[0].step
        full = result.geometry.index_to_world(listed[None])[0]
        half_stride = 0.5 * stride * np.asarray(result.geometry.spacing)
        assert np.linalg.norm(centre - full) <= np.linalg.norm(half_stride), (centre, full)
    else:
        assert centre is None


@pytest.mark.slow
def test_guidance_raises_the_guided_overlap_between_two_patients(tmp_path, capsys):
    """The two bundled patients' CTs (a 40 mm slab against an abdomen and pelvis, headers
    a metre apart): with the liver and spleen guiding, their DSC rises above the unguided
    run's and the liver's reaches 0.85; the command line reports guided and held-out DSC
    apart, and refuses a label one map lacks, writing nothing."""
    from ddmr.cli import main

    root = sample_ct_dir()
    paths = {side: (root / "images" / f"{name}.nii.gz", root / "labels" / f"{name}.nii.gz")
             for side, name in (("fixed", "totalseg-upper-abdomen"),
                                ("moving", "totalseg-abdomen-pelvis"))}
    common = ["register", "--fixed", str(paths["fixed"][0]), "--moving",
              str(paths["moving"][0]), "--fixed-labels", str(paths["fixed"][1]),
              "--moving-labels", str(paths["moving"][1]), "--outputs", "warped_seg"]
    scores = {}
    for name, extra in (("plain", []), ("guided", ["--guide", "5,1"])):
        assert main([*common, "-o", str(tmp_path / name), *extra]) == 0
        import json

        summary = json.loads((tmp_path / name / "summary.json").read_text())
        scores[name] = summary["metrics"]["dsc_per_label"]
    printed = capsys.readouterr().out
    assert "DSC guided" in printed and "held out" in printed
    assert scores["guided"][str(LIVER)] >= 0.85
    for label in (LIVER, SPLEEN):
        assert scores["guided"][str(label)] > scores["plain"][str(label)]
    assert main([*common, "-o", str(tmp_path / "kidney"), "--guide", "2"]) == 2
    assert "not in both label maps" in capsys.readouterr().err
    assert not (tmp_path / "kidney").exists()


def test_qc_reports_the_guided_labels_apart_and_fails_when_they_do_not_meet():
    for guided, passed in ((0.93, True), (0.31, False), (None, False)):
        verdict = Verdict([], {})
        add_guidance(verdict, {"dsc_guided": guided, "dsc_held_out": 0.44})
        assert verdict.passed is passed
        assert verdict.measures == {"guided_dsc": guided, "held_out_dsc": 0.44}
        assert "held out 0.44" in verdict.line()


@pytest.mark.slow
def test_a_sagittal_slab_of_another_brain_is_found_along_its_cut_axis():
    """A 40 mm sagittal slab of another person's brain, its header moved 600 mm along R,
    against a whole brain: the cut is across R, searched there; the structures the slab
    shows overlap (DSC over 0.75 where it has data) and QC passes."""
    import ddmr

    root = sample_cohort_dir()

    def side(name: str):
        image, geometry = load_image(root / "images" / f"{name}.nii.gz")
        labels, _ = load_labels(root / "labels" / f"{name}.nii.gz")
        return image, labels, geometry

    fixed = side("pycortex-s1")
    image, labels, geometry = side("itk-kmeans")
    affine = geometry.affine.copy()
    affine[:3, 3] = geometry.index_to_world(np.array([[38.0, 0.0, 0.0]]))[0] + (600, 0, 0)
    cut = Geometry(affine, image[38:58].shape)
    result = ddmr.register((fixed[0], fixed[2]), (np.ascontiguousarray(image[38:58]), cut),
                           (fixed[1], fixed[2]), (np.ascontiguousarray(labels[38:58]), cut))
    world = result.summary["affine_prealignment"]["world_affine"]
    assert world["partial_field_of_view"] and world["start"].startswith("along R")
    assert result.summary["metrics"]["dsc_shared"] > 0.75
    assert result.qc.passed, result.qc.line()
