"""ddmr.register in world space: the displacement file reproduces warped.nii.gz under
ANTs and SimpleITK, a constant network output is the right translation in mm, labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddmr.io.fields import load_displacement
from ddmr.io.images import load_image, save_image
from ddmr.spatial.grid import LPS_FLIP
from register_helpers import (
    oblique_fixed,
    other_moving,
    sample_scene,
    save_tiny_model,
    write_pair,
)


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        a, b = a[mask], b[mask]
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Oblique anisotropic fixed, moving with another FOV/orientation, labels, models."""
    folder = write_pair(tmp_path_factory.mktemp("pair"))
    save_tiny_model(folder / "random.safetensors")
    save_tiny_model(folder / "shift.safetensors", bias=(1.5, -2.0, 1.0))
    return folder


def run_register(pair, model, out, **kwargs):
    import ddmr

    kwargs.setdefault("affine", False)  # the network's field alone, to test the geometry
    kwargs.setdefault("engine", False)
    result = ddmr.register(pair / "fixed.nii.gz", pair / "moving.nii.gz",
                           pair / "fixed_seg.nii.gz", pair / "moving_seg.nii.gz",
                           model=pair / model, **kwargs)
    result.save(out)
    return result


def apply_with_ants(out, pair, fixed_name="fixed", moving_name="moving") -> np.ndarray:
    import ants

    fixed = ants.image_read(str(pair / f"{fixed_name}.nii.gz"))
    moving = ants.image_read(str(pair / f"{moving_name}.nii.gz"))
    warped = ants.apply_transforms(fixed, moving, [str(out / "displacement.nii.gz")],
                                   interpolator="linear")
    return warped.numpy()


def apply_with_sitk(out, pair, fixed_name="fixed", moving_name="moving") -> np.ndarray:
    import SimpleITK as sitk  # noqa: N813

    fixed = sitk.ReadImage(str(pair / f"{fixed_name}.nii.gz"))
    moving = sitk.ReadImage(str(pair / f"{moving_name}.nii.gz"), sitk.sitkFloat32)
    field = sitk.ReadImage(str(out / "displacement.nii.gz"))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(warped).transpose(2, 1, 0)


@pytest.mark.parametrize(("model", "options"), [
    ("random.safetensors", {}), ("shift.safetensors", {}),
    ("shift.safetensors", {"affine": "world", "engine": True}),  # the whole default path
])
def test_displacement_file_reproduces_warped_under_ants_and_simpleitk(pair, tmp_path, model,
                                                                      options):
    out = tmp_path / "out"
    result = run_register(pair, model, out, **options)
    names = sorted(p.name for p in out.iterdir())
    from ddmr.registration.outputs import OUTPUT_FILES

    assert names == sorted(OUTPUT_FILES)
    warped, geometry = load_image(out / "warped.nii.gz")
    assert geometry.isclose(oblique_fixed(), 1e-4)
    np.testing.assert_allclose(warped, result.warped, atol=1e-4)
    mask = warped != 0
    assert mask.mean() > 0.8
    for other in (apply_with_ants(out, pair), apply_with_sitk(out, pair)):
        assert correlation(other, warped, mask) >= 0.99
        assert np.abs(other - warped)[mask].mean() < 0.02 * np.abs(warped).max()


def test_roles_swapped_lpi_fixed_and_oblique_moving(pair, tmp_path):
    """The same check with the LPI-like, rotated grid as the fixed image."""
    import ddmr

    out = tmp_path / "out"
    ddmr.register(pair / "moving.nii.gz", pair / "fixed.nii.gz",
                  model=pair / "shift.safetensors").save(out)
    warped, geometry = load_image(out / "warped.nii.gz")
    assert geometry.isclose(other_moving(), 1e-4)
    mask = warped != 0
    assert mask.mean() > 0.3
    for other in (apply_with_ants(out, pair, "moving", "fixed"),
                  apply_with_sitk(out, pair, "moving", "fixed")):
        assert correlation(other, warped, mask) >= 0.99


def test_constant_output_is_the_expected_translation_in_mm(pair, tmp_path):
    out = tmp_path / "out"
    result = run_register(pair, "shift.safetensors", out)
    summary = json.loads((out / "summary.json").read_text())
    model_affine = np.asarray(summary["model"]["grid"]["affine"])
    expected_ras = model_affine[:3, :3] @ np.array([1.5, -2.0, 1.0])
    assert np.linalg.norm(expected_ras) > 2.0
    # the file holds LPS mm vectors on the fixed grid: read them raw with nibabel
    import nibabel as nib

    raw = np.asarray(nib.load(str(out / "displacement.nii.gz")).dataobj)[:, :, :, 0, :]
    np.testing.assert_allclose(raw, np.broadcast_to(LPS_FLIP @ expected_ras, raw.shape),
                               atol=1e-3)
    np.testing.assert_allclose(result.displacement_mm,
                               np.broadcast_to(expected_ras[:, None, None, None],
                                               result.displacement_mm.shape), atol=1e-3)
    # and io reads it back as the voxel field of the fixed grid
    voxels, geometry = load_displacement(out / "displacement.nii.gz")
    np.testing.assert_allclose(voxels, result.displacement_voxels(), atol=1e-3)
    # a translation: Jacobian 1, no folding; the warped image is the moving scene there
    np.testing.assert_allclose(result.jacobian, 1.0, atol=1e-4)
    assert summary["metrics"]["folding_percent"] == 0.0
    shift = np.array([2.0, -3.0, 1.5])
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    from register_helpers import scene

    truth = 100 * scene(geometry.index_to_world(index) + expected_ras - shift)
    mask = result.warped != 0
    assert correlation(result.warped, truth, mask) > 0.995


def test_summary_has_model_runtimes_and_label_metrics(pair, tmp_path):
    out = tmp_path / "out"
    result = run_register(pair, "random.safetensors", out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["name"] == "random"
    assert len(summary["model"]["sha256"]) == 64
    assert set(summary["runtime_s"]) >= {"load", "preprocess", "network", "engine", "native",
                                         "write", "total"}
    metrics = summary["metrics"]
    for key in ("dsc", "hd95", "tre", "folding_percent"):
        assert metrics[key] is not None
    # the random net is near the identity: the warped labels are the moving labels
    # resampled to the fixed grid, so DSC matches the 2-3 mm offset of the scene
    assert 0.3 < metrics["dsc"] < 1.0
    assert set(np.unique(result.warped_seg)) <= {0, 1, 2}
    assert metrics["folding_percent"] < 1.0


def test_array_inputs_give_the_same_result(pair):
    import ddmr

    fixed = load_image(pair / "fixed.nii.gz")
    moving = load_image(pair / "moving.nii.gz")
    by_array = ddmr.register(fixed, moving, model=pair / "shift.safetensors", engine=False)
    by_path = ddmr.register(pair / "fixed.nii.gz", pair / "moving.nii.gz",
                            model=str(pair / "shift.safetensors"), engine=False)
    np.testing.assert_allclose(by_array.warped, by_path.warped, atol=1e-5)
    assert by_array.warped_seg is None
    assert by_array.summary["fixed"] == "<fixed array>"


def test_affine_prealignment_recovers_a_rigid_motion(tmp_path):
    """A zero network: the displacement file is the ANTs affine alone, and it maps each
    fixed point onto the moving point showing the same anatomy."""
    import ddmr
    from register_helpers import grid, rotation

    fixed_geometry = grid((40, 40, 40), (1.6, 1.6, 1.6), rotation((0, 0, 1), 10),
                          (0.0, 0.0, 0.0))
    moving_geometry = grid((44, 40, 42), (1.5, 1.5, 1.5), np.eye(3), (2.0, 1.0, 0.0))
    shift = np.array([4.0, -3.0, 2.0])
    fixed = sample_scene(fixed_geometry, sharp=True)
    moving = sample_scene(moving_geometry, shift, sharp=True)
    model = save_tiny_model(tmp_path / "zero.safetensors", zero=True)
    result = ddmr.register((fixed, fixed_geometry), (moving, moving_geometry), model=model,
                           affine="ants", engine=False)
    assert result.summary["affine_prealignment"]["matrix_ras"] is not None
    error = result.displacement_mm - shift[:, None, None, None]
    inner = (slice(None), slice(8, -8), slice(8, -8), slice(8, -8))
    assert np.linalg.norm(error[inner], axis=0).mean() < 1.0
    assert correlation(result.warped, fixed, result.warped != 0) > 0.98
    # the displacement file holds the full transform: ANTs reproduces warped.nii.gz
    result.save(tmp_path / "out")
    save_image(tmp_path / "fixed.nii.gz", fixed, fixed_geometry)
    save_image(tmp_path / "moving.nii.gz", moving, moving_geometry)
    by_ants = apply_with_ants(tmp_path / "out", tmp_path)
    assert correlation(by_ants, result.warped, result.warped != 0) >= 0.99


def test_import_ddmr_is_light_and_register_is_a_documented_function():
    import subprocess
    import sys

    code = ("import sys, inspect, pydoc, ddmr; assert 'torch' not in sys.modules; "
            "f = ddmr.register; assert inspect.isfunction(f); "
            "p = inspect.signature(f).parameters; "
            "assert list(p)[:4] == ['fixed', 'moving', 'fixed_labels', 'moving_labels'], "
            "list(p); text = pydoc.render_doc(f); "
            "assert 'engine' in text and 'fixed_labels' in text; "
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.stdout.strip() == "ok", done.stderr


def test_label_sampling_is_label_exact_and_matches_onehot_warping():
    """On the moving grid itself (identity) and at half-voxel shifts, the labels agree with
    ddmr.nn.warp_labels' one-hot method."""
    import torch

    from ddmr.spatial.warp import sample_labels, warp_labels

    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 4, size=(9, 10, 11)).astype(np.uint8))[None, None]
    shift = torch.tensor([0.3, -0.4, 0.45])
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)
                                         for n in (9, 10, 11)], indexing="ij"), -1)
    points = (index + shift).reshape(-1, 3)
    ours = sample_labels(labels, points.T, [0, 1, 2, 3]).reshape(9, 10, 11)
    field = shift.view(1, 3, 1, 1, 1).expand(1, 3, 9, 10, 11)
    theirs = warp_labels(labels, field, method="onehot")[0, 0]
    inner = (slice(0, 8), slice(1, 9), slice(0, 10))  # away from the padded border
    assert torch.equal(ours[inner], theirs[inner])
    same = sample_labels(labels, index.reshape(-1, 3).T, [0, 1, 2, 3]).reshape(9, 10, 11)
    assert torch.equal(same, labels[0, 0])


def test_label_metrics_on_boxes_equal_the_metrics_module():
    from ddmr import metrics
    from ddmr.registration.scores import field_metrics, label_metrics

    rng = np.random.default_rng(1)
    a = np.zeros((30, 32, 28), np.uint8)
    b = np.zeros_like(a)
    a[5:15, 6:20, 4:12] = 1
    b[6:16, 5:19, 5:13] = 1
    a[20:29, 0:8, 10:20] = 2  # touches the array border
    b[21:30, 0:9, 11:20] = 2
    spacing = (1.2, 0.9, 2.0)
    ours = label_metrics(a, b, spacing)
    hd95 = metrics.hausdorff_per_label(a, b, spacing, [1, 2], 95)
    assert ours["hd95"] == pytest.approx(float(np.mean(hd95)))
    assert ours["dsc"] == pytest.approx(float(np.mean(metrics.dice_per_label(a, b, [1, 2]))))
    assert ours["tre"] == pytest.approx(metrics.centroid_tre(a, b, spacing, [1, 2]))
    field = rng.normal(0, 0.6, size=(3, 12, 13, 14)).astype(np.float32)
    import torch

    from ddmr.spatial.field import jacobian_determinant

    jacobian = jacobian_determinant(torch.from_numpy(field)[None])[0, 0].numpy()
    ours = field_metrics(jacobian, field)
    assert ours["folding_percent"] == pytest.approx(metrics.folding_percent(field))
    assert ours["sdlogj"] == pytest.approx(metrics.sdlogj(field), rel=1e-5)


def test_jacobian_in_slabs_equals_the_whole_volume(monkeypatch):
    import torch

    import ddmr.spatial.field as field
    from ddmr.spatial.field import jacobian_determinant
    from register_helpers import grid, rotation

    geometry = grid((17, 9, 8), (1.5, 1.0, 2.0), rotation((1, 2, 3), 30), (0, 0, 0))
    rng = np.random.default_rng(3)
    field_mm = rng.normal(0, 1.0, size=(3, *geometry.shape)).astype(np.float32)
    voxels = field.mm_to_voxels(field_mm, geometry)
    whole = jacobian_determinant(torch.from_numpy(voxels)[None])[0, 0].numpy()
    monkeypatch.setattr(field, "SLAB_VOXELS", 9 * 8 * 4)  # 4 slices per slab, last 1
    monkeypatch.setenv("DDMR_KERNELS", "torch")  # the slabs are the torch path's
    np.testing.assert_allclose(field.jacobian_determinant_mm(field_mm, geometry), whole,
                               rtol=1e-5, atol=1e-5)


def test_a_default_registration_imports_no_training_dataset_or_evaluation_code(tmp_path):
    """``ddmr register`` (default model and engine) on a small pair, in a fresh process:
    none of the training, dataset, augmentation or evaluation modules is imported."""
    import subprocess
    import sys

    from ddmr.io.images import save_image
    from register_helpers import grid, rotation

    fixed_geometry = grid((36, 40, 34), (2.0, 2.0, 2.0), rotation((0, 0, 1), 8), (0, 0, 0))
    moving_geometry = grid((38, 36, 36), (2.0, 2.0, 2.0), np.eye(3), (3.0, -2.0, 1.0))
    save_image(tmp_path / "fixed.nii.gz", sample_scene(fixed_geometry), fixed_geometry)
    save_image(tmp_path / "moving.nii.gz", sample_scene(moving_geometry, (2.0, 1.0, 0.0)),
               moving_geometry)
    code = ("import sys; from ddmr.cli import main; "
            f"status = main(['register', '--fixed', {str(tmp_path / 'fixed.nii.gz')!r}, "
            f"'--moving', {str(tmp_path / 'moving.nii.gz')!r}, '-o', "
            f"{str(tmp_path / 'out')!r}]); "
            "print('\\n', status, *sorted(m for m in sys.modules if m.startswith('ddmr')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    status, *modules = done.stdout.strip().splitlines()[-1].split()
    assert status == "0", done.stderr
    assert (tmp_path / "out" / "inverse_displacement.nii.gz").exists()
    forbidden = ("ddmr.train", "ddmr.data", "ddmr.augment", "ddmr.evaluate", "ddmr.baselines",
                 "ddmr.report", "ddmr.losses.dice", "ddmr.losses.ssim")
    assert "ddmr.registration.engine" in modules
    assert not [m for m in modules if m.startswith(forbidden)]
