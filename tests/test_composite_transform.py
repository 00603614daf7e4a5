"""Issue 34: a registration as one ITK composite transform (``transform.h5``,
``inverse_transform.h5``; :mod:`ddmr.io.composite`), checked against independent readers:
ANTs (antspyx's ``apply_transforms`` and its ``antsApplyTransforms`` program) and
SimpleITK; ``ddmr apply --transform X.h5`` with DDMR's and ANTs' composites; ANTs' point
CSVs (``x,y,z,t``, ``--points-space``) against ``ants.apply_transforms_to_points``; and the
refusals (exit 2, one line, nothing written)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ddmr.cli import main
from ddmr.io.composite import (
    displacement_on,
    read_transform,
    write_composite,
    write_inverse_composite,
)
from ddmr.io.images import load_image, save_image
from register_helpers import oblique_fixed, other_moving, refused_by, sample_scene, write_csv

SHIFT = (2.0, -3.0, 1.5)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> tuple[Path, object]:
    """A registration with an affine part and a residual field (oblique fixed grid, a
    moving grid of another orientation), saved to ``OUT`` with the two composites."""
    import ddmr
    from ddmr.registration.settings import EngineSettings

    folder = tmp_path_factory.mktemp("composite")
    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    fixed = sample_scene(fixed_geometry, sharp=True)
    moving = sample_scene(moving_geometry, SHIFT, sharp=True)
    save_image(folder / "fixed.nii.gz", fixed, fixed_geometry)
    save_image(folder / "moving.nii.gz", moving, moving_geometry)
    result = ddmr.register((fixed, fixed_geometry), (moving, moving_geometry), model="none",
                           engine=EngineSettings(levels=(2, 1), iterations=(20, 10), window=5))
    assert not np.allclose(result.point_map, np.eye(4), atol=1e-2)  # both parts present
    assert np.abs(result.residual_mm).max() > 1.0
    out = result.save(folder / "out")
    write_composite(out / "transform.h5", result.point_map, result.residual_mm,
                    result.geometry)
    write_inverse_composite(out / "inverse_transform.h5", result.point_map, result.inverse_mm,
                            result.moving_geometry)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries
    return folder, result


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def ants_warp(fixed: Path, moving: Path, transforms: list[Path]) -> np.ndarray:
    import ants

    return ants.apply_transforms(ants.image_read(str(fixed)), ants.image_read(str(moving)),
                                 [str(t) for t in transforms], interpolator="linear").numpy()


def ants_program(fixed: Path, moving: Path, transform: Path, output: Path) -> np.ndarray:
    """antsApplyTransforms as antspyx ships it, called with the program's own arguments."""
    from ants.internal import get_lib_fn

    status = get_lib_fn("antsApplyTransforms")(["-d", "3", "-i", str(moving), "-r", str(fixed),
                                                "-t", str(transform), "-o", str(output)])
    assert status == 0
    return load_image(output)[0]


def sitk_warp(fixed: Path, moving: Path, transform: Path) -> np.ndarray:
    import SimpleITK as sitk  # noqa: N813

    warped = sitk.Resample(sitk.ReadImage(str(moving), sitk.sitkFloat32),
                           sitk.ReadImage(str(fixed)), sitk.ReadTransform(str(transform)),
                           sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(warped).transpose(2, 1, 0)


def test_transform_h5_reproduces_warped_under_ants_its_program_and_simpleitk(registered,
                                                                           tmp_path):
    folder, result = registered
    out = folder / "out"
    fixed, moving, h5 = folder / "fixed.nii.gz", folder / "moving.nii.gz", out / "transform.h5"
    warped = load_image(out / "warped.nii.gz")[0]
    mask = warped != 0
    assert mask.mean() > 0.5
    by = {"ants.apply_transforms": ants_warp(fixed, moving, [h5]),
          "antsApplyTransforms": ants_program(fixed, moving, h5, tmp_path / "w.nii.gz"),
          "SimpleITK": sitk_warp(fixed, moving, h5)}
    scale = np.abs(warped).max()
    for name, other in by.items():
        inside = mask & (other != 0)
        assert inside.sum() >= 0.99 * mask.sum(), name
        assert correlation(other, warped, inside) > 0.9999, name
        assert np.abs(other - warped)[inside].max() < 1e-4 * scale, name
    # the composite is ANTs' [residual_displacement.nii.gz, affine.mat], the same transform
    # as displacement.nii.gz, and the queue's order matters: the other one is far off
    pieces = ants_warp(fixed, moving, [out / "residual_displacement.nii.gz",
                                       out / "affine.mat"])
    whole = ants_warp(fixed, moving, [out / "displacement.nii.gz"])
    for other in (pieces, whole):
        inside = mask & (other != 0)
        assert np.abs(other - by["ants.apply_transforms"])[inside].max() < 1e-3 * scale
    import SimpleITK as sitk  # noqa: N813

    composite = sitk.ReadTransform(str(h5))
    assert composite.GetName() == "CompositeTransform"
    kinds = [composite.GetNthTransform(k).GetName() for k in range(2)]
    assert kinds == ["AffineTransform", "DisplacementFieldTransform"]
    swapped = sitk.CompositeTransform([composite.GetNthTransform(1),
                                       composite.GetNthTransform(0)])
    sitk.WriteTransform(swapped, str(tmp_path / "swapped.h5"))
    wrong = sitk_warp(fixed, moving, tmp_path / "swapped.h5")
    assert np.abs(wrong - warped)[mask & (wrong != 0)].max() > 0.05 * scale
    # and read back as a dense field on the fixed grid, it is displacement_mm
    dense = displacement_on(read_transform(h5), result.geometry)
    np.testing.assert_allclose(dense, result.displacement_mm, atol=2e-3)


def test_inverse_transform_h5_warps_the_fixed_image_onto_the_moving_grid(registered):
    folder, result = registered
    out = folder / "out"
    fixed, moving = folder / "fixed.nii.gz", folder / "moving.nii.gz"
    h5 = out / "inverse_transform.h5"
    reference = ants_warp(moving, fixed, [out / "inverse_displacement.nii.gz"])
    mask = reference != 0
    assert mask.mean() > 0.3
    scale = np.abs(reference).max()
    for other in (ants_warp(moving, fixed, [h5]), sitk_warp(moving, fixed, h5)):
        inside = mask & (other != 0)
        assert inside.sum() >= 0.99 * mask.sum()
        assert np.abs(other - reference)[inside].max() < 1e-3 * scale
    # on the moving grid it is the inverse field exactly; beyond it, P^-1 (not identity)
    transform = read_transform(h5)
    dense = displacement_on(transform, result.moving_geometry)
    np.testing.assert_allclose(dense, result.inverse_mm, atol=2e-3)
    far = np.array([[400.0, -300.0, 250.0]])
    from ddmr.io.composite import transform_points

    expected = (np.linalg.inv(result.point_map) @ np.append(far[0], 1.0))[:3]
    np.testing.assert_allclose(transform_points(transform, far)[0], expected, atol=1e-6)


def test_ddmr_apply_takes_ddmr_and_ants_composites(registered, tmp_path):
    import ants

    folder, _ = registered
    out = folder / "out"
    fixed, moving = folder / "fixed.nii.gz", folder / "moving.nii.gz"
    warped = load_image(out / "warped.nii.gz")[0]
    target = tmp_path / "w.nii.gz"
    assert main(["apply", "--transform", str(out / "transform.h5"), "--moving", str(moving),
                 "--reference", str(fixed), "-o", str(target)]) == 0
    mine, grid = load_image(target)
    assert grid.isclose(oblique_fixed(), 1e-4)
    assert np.abs(mine - warped).max() < 1e-3 * np.abs(warped).max()
    back = tmp_path / "back.nii.gz"
    assert main(["apply", "--transform", str(out / "inverse_transform.h5"), "--moving",
                 str(fixed), "--reference", str(moving), "-o", str(back)]) == 0
    expected = ants_warp(moving, fixed, [out / "inverse_displacement.nii.gz"])
    assert_same_inside(load_image(back)[0], expected)
    # a composite that ANTs wrote (affine + SyN), both ways
    registration = ants.registration(ants.image_read(str(fixed)), ants.image_read(str(moving)),
                                     "SyN", reg_iterations=(4, 2), aff_iterations=(5, 2),
                                     aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                                     outprefix=str(tmp_path / "ants_"),
                                     write_composite_transform=True)
    forward, inverse = registration["fwdtransforms"], registration["invtransforms"]
    assert forward.endswith("Composite.h5") and inverse.endswith("InverseComposite.h5")
    for transform, source, grid_of, name in ((forward, moving, fixed, "a.nii.gz"),
                                             (inverse, fixed, moving, "b.nii.gz")):
        assert main(["apply", "--transform", transform, "--moving", str(source),
                     "--reference", str(grid_of), "-o", str(tmp_path / name)]) == 0
        assert_same_inside(load_image(tmp_path / name)[0],
                           ants_warp(grid_of, source, [Path(transform)]))


def test_composite_field_is_stored_as_compressed_float32_within_its_step(tmp_path,
                                                                         monkeypatch):
    """The field in the ``.h5`` is float32 through HDF5's shuffle and deflate filters (not
    SimpleITK's uncompressed float64), rounded to ``STEP_MM``: read back by h5py and by
    ITK it is the field to within half that step (and so within FIELD_STEP_MM), also
    across chunks of a few k-slices with a partial last one; the same field gives the
    same bytes."""
    import h5py

    from ddmr.io import composite
    from ddmr.io.images import FIELD_STEP_MM

    geometry = oblique_fixed()
    size_i, size_j, size_k = geometry.shape
    monkeypatch.setattr(composite, "CHUNK_VALUES", 3 * size_i * size_j * 4)  # 4 slices
    grid = np.meshgrid(*(np.linspace(0, 3, n) for n in geometry.shape), indexing="ij")
    field = np.stack([4 * np.sin(grid[0] + grid[2]), 3 * np.cos(grid[1]) * grid[0],
                      -2.5 * np.sin(grid[2] * grid[1])]).astype(np.float32)
    field += np.random.default_rng(5).uniform(-0.01, 0.01, field.shape).astype(np.float32)
    h5 = tmp_path / "t.h5"
    write_composite(h5, np.eye(4), field, geometry)
    with h5py.File(h5, "r") as f:
        assert f["TransformGroup/0/TransformType"][0] == b"CompositeTransform_double_3_3"
        assert (f["TransformGroup/2/TransformType"][0]
                == b"DisplacementFieldTransform_double_3_3")
        data = f["TransformGroup/2/TransformParameters"]
        assert data.dtype == np.float32 and data.shape == (field.size,)
        assert data.compression == "gzip" and data.shuffle
        assert data.chunks == (3 * size_i * size_j * 4,) and size_k % 4  # a partial chunk
        assert data.id.get_storage_size() < 0.75 * data.size * 4  # smaller than float32
        stored = data[()].reshape(size_k, size_j, size_i, 3)
    lps = field * np.array([-1.0, -1.0, 1.0], dtype=np.float32)[:, None, None, None]
    assert np.abs(stored - lps.transpose(3, 2, 1, 0)).max() <= composite.STEP_MM / 2
    assert np.array_equal(stored / composite.STEP_MM, np.rint(stored / composite.STEP_MM))
    dense = displacement_on(read_transform(h5), geometry)  # ITK's reading
    assert np.abs(dense - field).max() <= composite.STEP_MM / 2 + 1e-5 < FIELD_STEP_MM
    write_composite(tmp_path / "again.h5", np.eye(4), field, geometry)
    assert (tmp_path / "again.h5").read_bytes() == h5.read_bytes()


def assert_same_inside(mine: np.ndarray, expected: np.ndarray) -> None:
    """The same image where both are defined (non-zero), which is nearly all of where
    ANTs' is: at the image's edge ANTs and DDMR may differ by a voxel."""
    mask = expected != 0
    inside = mask & (mine != 0)
    assert mask.mean() > 0.3 and inside.sum() >= 0.98 * mask.sum()
    assert correlation(mine, expected, inside) > 0.9999
    assert np.abs(mine - expected)[inside].max() < 0.01 * np.abs(expected).max()


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def fixed_points_lps(count: int = 12) -> np.ndarray:
    """Points (count, 3) in LPS inside the fixed grid's middle."""
    geometry = oblique_fixed()
    rng = np.random.default_rng(3)
    index = rng.uniform(0.2, 0.8, (count, 3)) * (np.asarray(geometry.shape) - 1)
    return geometry.index_to_world(index) * np.array([-1.0, -1.0, 1.0])


def test_ants_point_csv_round_trip_against_apply_transforms_to_points(registered, tmp_path):
    import ants
    import pandas as pd

    folder, _ = registered
    out = folder / "out"
    points = fixed_points_lps()
    header = ["label", "x", "y", "z", "t", "note"]
    rows = [[f"p{k}", *(repr(float(v)) for v in point), "0.5", f"n{k}"]
            for k, point in enumerate(points)]
    source = write_csv(tmp_path / "points.csv", header, rows)
    frame = pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "z": points[:, 2],
                          "t": np.full(len(points), 0.5)})
    expected = ants.apply_transforms_to_points(3, frame, [str(out / "transform.h5")])
    pieces = ants.apply_transforms_to_points(3, frame, [str(out / "residual_displacement.nii.gz"),
                                                        str(out / "affine.mat")])
    np.testing.assert_allclose(pieces[["x", "y", "z"]].values,
                               expected[["x", "y", "z"]].values, atol=1e-3)
    mapped = tmp_path / "mapped.csv"
    assert main(["apply", "--transform", str(out / "transform.h5"), "--points", str(source),
                 "--points-space", "lps", "-o", str(mapped)]) == 0
    names, written = read_csv(mapped)
    assert names == header
    assert [[row[0], row[4], row[5]] for row in written] == [[r[0], r[4], r[5]] for r in rows]
    there = np.array([[float(v) for v in row[1:4]] for row in written])
    np.testing.assert_allclose(there, expected[["x", "y", "z"]].values, atol=1e-4)
    assert np.linalg.norm(there - points, axis=1).max() > 1.0  # they moved
    # the folder, fixed-space points to the moving space (--inverse), is the same map
    by_folder = tmp_path / "by_folder.csv"
    assert main(["apply", "--transform", str(out), "--inverse", "--points", str(source),
                 "--points-space", "lps", "-o", str(by_folder)]) == 0
    again = np.array([[float(v) for v in row[1:4]] for row in read_csv(by_folder)[1]])
    np.testing.assert_allclose(again, there, atol=1e-3)
    # and back through the inverse composite: the points they came from
    back = tmp_path / "back.csv"
    assert main(["apply", "--transform", str(out / "inverse_transform.h5"), "--points",
                 str(mapped), "--points-space", "lps", "-o", str(back)]) == 0
    home = np.array([[float(v) for v in row[1:4]] for row in read_csv(back)[1]])
    inverse = ants.apply_transforms_to_points(3, expected, [str(out / "inverse_transform.h5")])
    np.testing.assert_allclose(home, inverse[["x", "y", "z"]].values, atol=1e-4)
    assert np.linalg.norm(home - points, axis=1).max() < 0.1


def test_named_columns_and_points_space_agree_or_are_refused(registered, tmp_path, capsys):
    folder, _ = registered
    h5 = folder / "out" / "transform.h5"
    points = fixed_points_lps(3)
    named = write_csv(tmp_path / "named.csv", ["x_lps", "y_lps", "z_lps"], points.tolist())
    plain = write_csv(tmp_path / "plain.csv", ["x", "y", "z"], points.tolist())
    outputs = {}
    for name, source, space in (("named", named, []), ("named_lps", named, ["lps"]),
                                ("plain", plain, ["lps"])):
        outputs[name] = tmp_path / f"{name}_out.csv"
        space = ["--points-space", *space] if space else []
        assert main(["apply", "--transform", str(h5), "--points", str(source), *space,
                     "-o", str(outputs[name])]) == 0
    values = {name: np.array(read_csv(path)[1], dtype=np.float64)
              for name, path in outputs.items()}
    np.testing.assert_allclose(values["named"], values["named_lps"])
    np.testing.assert_allclose(values["named"], values["plain"])
    # RAS-named columns read as RAS: the same points flipped give the flipped result
    ras = write_csv(tmp_path / "ras.csv", ["R", "A", "S"], (points * [-1, -1, 1]).tolist())
    assert main(["apply", "--transform", str(h5), "--points", str(ras), "--points-space",
                 "ras", "-o", str(tmp_path / "ras_out.csv")]) == 0
    np.testing.assert_allclose(np.array(read_csv(tmp_path / "ras_out.csv")[1], dtype=float),
                               values["named"] * [-1, -1, 1], atol=1e-5)
    capsys.readouterr()
    line = refused(["--transform", str(h5), "--points", str(named), "--points-space", "ras",
                    "-o", str(tmp_path / "no.csv")], capsys)
    assert "x_lps,y_lps,z_lps are LPS points, but the points were said to be RAS" in line
    assert not (tmp_path / "no.csv").exists()


def refused(argv: list[str], capsys) -> str:
    """Run ``ddmr apply ARGV``: exit status 2 and one line, returned."""
    return refused_by("apply", argv, capsys)


def test_refusals_exit_2_and_write_nothing(registered, tmp_path, capsys):
    folder, _ = registered
    out = folder / "out"
    h5 = out / "transform.h5"
    target = tmp_path / "target"
    target.mkdir()
    plain = write_csv(tmp_path / "plain.csv", ["x", "y", "z", "t"], [[1, 2, 3, 0]])
    line = refused(["--transform", str(h5), "--points", str(plain), "-o",
                    str(target / "p.csv")], capsys)
    assert "columns x,y,z do not say whether the points are LPS or RAS; give " \
           "--points-space lps (as ANTs writes them) or ras" in line, line
    # also with a folder
    line = refused(["--transform", str(out), "--points", str(plain), "-o",
                    str(target / "p.csv")], capsys)
    assert "--points-space" in line, line
    line = refused(["--transform", str(h5), "--inverse", "--points", str(plain),
                    "--points-space", "lps", "-o", str(target / "p.csv")], capsys)
    assert f"{h5}: a transform file maps one way" in line and "inverse_transform.h5" in line
    line = refused(["--transform", str(h5), "--inverse", "--moving",
                    str(folder / "fixed.nii.gz"), "--reference", str(folder / "moving.nii.gz"),
                    "-o", str(target / "w.nii.gz")], capsys)
    assert "pass the inverse composite" in line, line
    line = refused(["--transform", str(h5), "--moving", str(folder / "moving.nii.gz"), "-o",
                    str(target / "w.nii.gz")], capsys)
    assert f"{h5}: a transform file does not say which grid to warp onto; give a " \
           "reference image (--reference, the fixed image)" in line, line
    line = refused(["--transform", str(h5), "--moving", str(folder / "moving.nii.gz"),
                    "--points-space", "lps", "--reference", str(folder / "fixed.nii.gz"),
                    "-o", str(target / "w.nii.gz")], capsys)
    assert "--points-space is for --points" in line, line
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"not a transform")
    line = refused(["--transform", str(damaged), "--moving", str(folder / "moving.nii.gz"),
                    "--reference", str(folder / "fixed.nii.gz"), "-o",
                    str(target / "w.nii.gz")], capsys)
    assert f"{damaged}: cannot read an ITK transform file: not a transform file that ITK " \
           "can read" in line, line
    absent = tmp_path / "absent.h5"
    line = refused(["--transform", str(absent), "--points", str(plain), "--points-space",
                    "lps", "-o", str(target / "p.csv")], capsys)
    assert f"{absent}: no such file or folder (expected the output folder of ddmr " \
           "register, or an ITK transform file" in line, line
    assert list(target.iterdir()) == []
