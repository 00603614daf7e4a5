"""Image I/O, geometry and the displacement-field convention (ddmr <-> ITK/ANTs)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from conftest import smooth_field, smooth_volume
from ddmr.errors import InputError
from ddmr.io.convert import from_ants, from_sitk, to_ants, to_sitk
from ddmr.io.fields import load_displacement, save_displacement
from ddmr.io.images import FIELD_STEP_MM, load_image, load_labels, save_image, save_labels
from ddmr.spatial.grid import Geometry, check_same_geometry
from ddmr.spatial.resample import resample_to
from ddmr.spatial.warp import warp_image


def oblique_geometry(shape=(20, 24, 16), spacing=(1.3, 0.8, 2.1),
                     angles=(20.0, -15.0, 30.0), origin=(-12.0, 31.0, 7.5)) -> Geometry:
    """An anisotropic grid whose axes are rotated away from the world axes."""
    affine = np.eye(4)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return Geometry(affine, shape)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


# ----------------------------------------------------------------------------- geometry


def test_geometry_properties_and_itk_round_trip():
    geometry = oblique_geometry()
    assert np.allclose(geometry.spacing, (1.3, 0.8, 2.1))
    assert np.allclose(geometry.direction.T @ geometry.direction, np.eye(3))
    origin, spacing, direction = geometry.to_itk()
    assert np.allclose(origin, (12.0, -31.0, 7.5))  # LPS
    back = Geometry.from_itk(origin, spacing, direction, geometry.shape)
    assert back.isclose(geometry, 1e-9)
    points = np.array([[0.0, 0.0, 0.0], [3.5, 2.0, 7.25]])
    assert np.allclose(geometry.world_to_index(geometry.index_to_world(points)), points)


def test_sitk_and_ants_conversions_agree_with_nibabel(tmp_path):
    geometry = oblique_geometry()
    array = smooth_volume(geometry.shape)[0, 0].numpy()
    save_image(tmp_path / "a.nii.gz", array, geometry)
    import ants
    import SimpleITK as sitk  # noqa: N813

    for read, convert in ((sitk.ReadImage, from_sitk), (ants.image_read, from_ants)):
        data, seen = convert(read(str(tmp_path / "a.nii.gz")))
        assert np.allclose(data, array)
        assert seen.isclose(geometry, 1e-4)
    for make, convert in ((to_sitk, from_sitk), (to_ants, from_ants)):
        data, seen = convert(make(array, geometry))
        assert np.allclose(data, array)
        assert seen.isclose(geometry, 1e-9)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_image_round_trip_keeps_data_and_affine(tmp_path, extension):
    geometry = oblique_geometry()
    array = smooth_volume(geometry.shape)[0, 0].numpy() * 100 - 20
    path = tmp_path / f"image{extension}"
    save_image(path, array, geometry)
    data, seen = load_image(path)
    assert data.dtype == np.float32 and data.shape == geometry.shape
    assert np.allclose(data, array, atol=1e-5)
    assert seen.isclose(geometry, 1e-4)
    assert listing(tmp_path) == [path.name]  # no temporary left behind


@pytest.mark.parametrize("extension", [".nii.gz", ".mha"])
def test_labels_round_trip(tmp_path, extension):
    geometry = oblique_geometry()
    labels = np.random.default_rng(0).integers(0, 256, geometry.shape).astype(np.uint8)
    path = tmp_path / f"labels{extension}"
    save_labels(path, labels, geometry)
    data, seen = load_labels(path)
    assert data.dtype == np.uint8 and np.array_equal(data, labels)
    assert seen.isclose(geometry, 1e-4)


def test_float_labels_with_integer_values_are_accepted(tmp_path):
    labels = np.zeros((4, 5, 6), np.float32)
    labels[1:3, 1:3, 1:3] = 7
    data, _ = load_labels(write_nifti(tmp_path / "l.nii.gz", labels))
    assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 7}


def test_trailing_singleton_dimension_is_squeezed(tmp_path):
    array = np.random.default_rng(0).random((5, 6, 7, 1)).astype(np.float32)
    data, geometry = load_image(write_nifti(tmp_path / "a.nii.gz", array))
    assert data.shape == (5, 6, 7) and geometry.shape == (5, 6, 7)


def test_torch_tensors_are_accepted(tmp_path):
    geometry = Geometry(np.eye(4), (4, 5, 6))
    save_image(tmp_path / "t.nii.gz", torch.rand(4, 5, 6), geometry)
    assert load_image(tmp_path / "t.nii.gz")[0].shape == (4, 5, 6)


# ----------------------------------------------------------------------------- bad input


def _zero_spacing(path: Path) -> Path:
    # nibabel refuses to write a zero voxel size, so patch the header bytes (pixdim[2])
    plain = path.with_name("plain.nii")
    write_nifti(plain, np.random.default_rng(0).random((4, 4, 4)).astype(np.float32))
    header = nib.load(str(plain)).header
    header.set_sform(None, code=0)
    header.set_qform(None, code=0)
    block = bytearray(plain.read_bytes())
    block[:348] = header.binaryblock
    block[84:88] = np.float32(0.0).tobytes()
    plain.unlink()
    path.write_bytes(gzip.compress(bytes(block)))
    return path


def _nan_affine(path: Path) -> Path:
    header = nib.Nifti1Header()
    header["srow_x"] = [1, 0, 0, 0]
    header["srow_y"] = [np.nan] * 4
    header["srow_z"] = [0, 0, 1, 0]
    header["sform_code"] = 1
    data = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, None, header), str(path))
    return path


def _truncated(path: Path) -> Path:
    whole = tmp = path.with_name("whole.nii.gz")
    write_nifti(tmp, np.random.default_rng(0).random((16, 16, 16)).astype(np.float32))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()
    return path


def _not_gzip(path: Path) -> Path:
    path.write_bytes(b"this is not an image at all" * 20)
    return path


BAD_IMAGES = {
    "missing": (lambda p: p, "no such file"),
    "directory": (lambda p: (p.mkdir(), p)[1], "directory"),
    "truncated": (_truncated, "cannot read"),
    "garbage": (_not_gzip, "cannot read"),
    "two_d": (lambda p: write_nifti(p, np.ones((5, 6), np.float32)), "expected a 3D"),
    "four_d": (lambda p: write_nifti(p, np.random.rand(5, 6, 7, 2).astype(np.float32)),
               "expected a 3D"),
    "nan": (lambda p: write_nifti(p, np.where(np.eye(4)[:, :, None] > 0, np.nan, 1.0)
                                  * np.ones((4, 4, 4), np.float32)), "NaN"),
    "constant": (lambda p: write_nifti(p, np.full((4, 4, 4), 3.0, np.float32)), "constant"),
    "zero_spacing": (_zero_spacing, "spacing"),
    "nan_affine": (_nan_affine, "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_raises_input_error_naming_the_file(tmp_path, case):
    make, problem = BAD_IMAGES[case]
    path = make(tmp_path / f"bad_{case}.nii.gz")
    before = listing(tmp_path)
    with pytest.raises(InputError) as error:
        load_image(path)
    message = str(error.value)
    assert str(path) in message and problem in message
    assert "\n" not in message
    assert listing(tmp_path) == before


def test_unsupported_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"image\.png.*unsupported file type"):
        load_image(path)


BAD_LABELS = {
    "fractional": (np.array([0, 1.5]), "non-integer"),
    "negative": (np.array([0, -1]), "negative"),
    "too_large": (np.array([0, 300]), "0..255"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_raise_input_error(tmp_path, case):
    values, problem = BAD_LABELS[case]
    data = np.zeros((4, 4, 4), np.float32 if case == "fractional" else np.int16)
    data.flat[: len(values)] = values
    path = write_nifti(tmp_path / f"{case}.nii.gz", data)
    with pytest.raises(InputError, match=problem) as error:
        load_labels(path)
    assert str(path) in str(error.value)


def test_check_same_geometry(tmp_path):
    a = oblique_geometry()
    check_same_geometry(a, Geometry(a.affine + 1e-5, a.shape), ["img", "lab"])
    with pytest.raises(InputError, match="lab: shape"):
        check_same_geometry(a, Geometry(a.affine, (1, 2, 3)), ["img", "lab"])
    shifted = a.affine.copy()
    shifted[0, 3] += 0.5
    with pytest.raises(InputError, match="lab: voxel-to-world affine differs from img"):
        check_same_geometry(a, Geometry(shifted, a.shape), ["img", "lab"])


# ---------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    geometry = Geometry(np.eye(4), (4, 5, 6))
    path = tmp_path / "out.nii.gz"
    save_image(path, np.ones((4, 5, 6)) * 2 + np.arange(6), geometry)
    old = path.read_bytes()
    save_image(tmp_path / "out.nii", np.ones((4, 5, 6)), geometry)
    old_nii = (tmp_path / "out.nii").read_bytes()

    def crash(image, file_map):  # dies after writing part of the file (.nii.gz)
        file_map["image"].fileobj.write(b"partial")
        raise KeyboardInterrupt

    def crash_save(image, filename):  # the same for .nii
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", crash)
    monkeypatch.setattr(nib, "save", crash_save)
    for target in (path, tmp_path / "out.nii"):
        with pytest.raises(KeyboardInterrupt):
            save_image(target, np.zeros((4, 5, 6)), geometry)
    assert path.read_bytes() == old
    assert (tmp_path / "out.nii").read_bytes() == old_nii
    assert listing(tmp_path) == ["out.nii", "out.nii.gz"]


def test_write_rejects_bad_targets(tmp_path):
    geometry = Geometry(np.eye(4), (4, 5, 6))
    with pytest.raises(InputError, match="cannot write file type"):
        save_image(tmp_path / "x.png", np.ones((4, 5, 6)), geometry)
    with pytest.raises(InputError, match="does not exist"):
        save_image(tmp_path / "nope" / "x.nii.gz", np.ones((4, 5, 6)), geometry)
    assert listing(tmp_path) == []


# --------------------------------------------------------------------- displacement fields


def test_displacement_round_trip_and_file_layout(tmp_path):
    geometry = oblique_geometry()
    u = smooth_field(geometry.shape, amplitude=2.0)[0].numpy()
    path = tmp_path / "displacement.nii.gz"
    save_displacement(path, torch.from_numpy(u)[None], geometry)
    image = nib.load(str(path))
    assert image.shape == (*geometry.shape, 1, 3)
    assert int(image.header["intent_code"]) == 1007
    back, seen = load_displacement(path)
    assert back.shape == u.shape
    # the file holds mm rounded to FIELD_STEP_MM: each component at most half a step off
    error_mm = np.einsum("ab,b...->a...", geometry.affine[:3, :3], back - u)
    assert np.abs(error_mm).max() <= 0.5 * FIELD_STEP_MM + 1e-5
    assert seen.isclose(geometry, 1e-4)
    in_mm, _ = load_displacement(path, units="mm")  # RAS mm straight from the file's LPS
    np.testing.assert_allclose(in_mm, np.einsum("ab,b...->a...", geometry.affine[:3, :3], back),
                               atol=1e-4)
    stored = np.asarray(image.dataobj, dtype=np.float64)
    np.testing.assert_array_equal(in_mm, (stored[:, :, :, 0, :] * [-1.0, -1.0, 1.0])
                                  .transpose(3, 0, 1, 2).astype(np.float32))
    assert np.array_equal(stored / FIELD_STEP_MM, np.rint(stored / FIELD_STEP_MM))
    # vectors are LPS mm: a pure +i voxel step is the i axis' LPS direction times spacing
    step = np.zeros_like(u)
    step[0] = 1.0
    save_displacement(path, step, geometry)
    vectors = np.asarray(nib.load(str(path)).dataobj)[0, 0, 0, 0]
    expected = np.diag([-1.0, -1.0, 1.0]) @ geometry.affine[:3, 0]
    assert np.allclose(vectors, expected, atol=FIELD_STEP_MM / 2 + 1e-6)


def test_displacement_convention_matches_ants_and_simpleitk(tmp_path):
    """ddmr's warp, ANTs and SimpleITK give the same warped image from the same file."""
    import ants
    import SimpleITK as sitk  # noqa: N813

    geometry = oblique_geometry(shape=(26, 30, 22))
    moving = smooth_volume(geometry.shape, seed=3)[0, 0].numpy()
    u = smooth_field(geometry.shape, amplitude=2.5, seed=5)[0].numpy()
    expected = warp_image(torch.from_numpy(moving)[None, None],
                          torch.from_numpy(u)[None])[0, 0].numpy()
    save_image(tmp_path / "moving.nii.gz", moving, geometry)
    save_displacement(tmp_path / "displacement.nii.gz", u, geometry)

    image = ants.image_read(str(tmp_path / "moving.nii.gz"))
    by_ants = ants.apply_transforms(image, image, [str(tmp_path / "displacement.nii.gz")],
                                    interpolator="linear").numpy()

    moving_itk = sitk.ReadImage(str(tmp_path / "moving.nii.gz"))
    field = sitk.ReadImage(str(tmp_path / "displacement.nii.gz"))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    by_itk = sitk.GetArrayFromImage(
        sitk.Resample(moving_itk, moving_itk, transform, sitk.sitkLinear, 0.0)
    ).transpose(2, 1, 0)

    inner = (slice(3, -3),) * 3
    # the check is sensitive: a wrong sign or axis order moves voxels by ~2 voxels
    assert np.abs(moving - expected)[inner].max() > 0.05
    for name, result in (("ants", by_ants), ("simpleitk", by_itk)):
        correlation = np.corrcoef(result.ravel(), expected.ravel())[0, 1]
        assert correlation >= 0.99, name
        assert np.abs(result - expected)[inner].max() < 1e-3, name


def test_load_displacement_rejects_scalar_image(tmp_path):
    path = write_nifti(tmp_path / "s.nii.gz", np.random.rand(4, 4, 4).astype(np.float32))
    with pytest.raises(InputError, match="not a 3D displacement field"):
        load_displacement(path)


# ------------------------------------------------------------------------------ resampling


def test_resample_identity_and_round_trip():
    geometry = oblique_geometry()
    image = smooth_volume(geometry.shape, seed=1)[0, 0].numpy()
    assert np.allclose(resample_to(image, geometry, geometry, order=3), image, atol=1e-5)
    labels = (image > 0.5).astype(np.uint8) * 3
    assert np.array_equal(resample_to(labels, geometry, geometry, order=0), labels)
    # onto a finer axis-aligned grid covering the same region and back
    corners = geometry.world_corners()
    fine = np.diag([0.6, 0.6, 0.6, 1.0])
    fine[:3, 3] = corners.min(0)
    extent = np.ceil((corners.max(0) - corners.min(0)) / 0.6).astype(int)
    target = Geometry(fine, tuple(extent))
    there = resample_to(image, geometry, target, order=3)
    back = resample_to(there, target, geometry, order=3)
    inner = (slice(3, -3),) * 3
    assert np.abs(back - image)[inner].max() < 0.02
    assert there.min() >= image.min() - 1e-6 and there.max() <= image.max() + 1e-6


def test_resample_fills_outside_with_cval():
    geometry = Geometry(np.eye(4), (6, 6, 6))
    shifted = np.eye(4)
    shifted[0, 3] = 10.0
    out = resample_to(np.ones((6, 6, 6), np.float32), geometry, Geometry(shifted, (6, 6, 6)),
                      order=3, cval=-1.0)
    assert np.all(out == -1.0)


def test_nothing_gz_is_left_open(tmp_path):
    # gzip sanity: files written by save_image are valid gzip streams
    geometry = Geometry(np.eye(4), (4, 5, 6))
    save_image(tmp_path / "a.nii.gz", np.arange(120).reshape(4, 5, 6), geometry)
    with gzip.open(tmp_path / "a.nii.gz") as handle:
        assert len(handle.read()) > 348
    assert os.path.getsize(tmp_path / "a.nii.gz") > 0
