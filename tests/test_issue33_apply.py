"""Issue 33, ``ddmr apply``: images and grids the transform does not reach (item 13), point
files with both conventions (14), transform folders whose files do not belong together
(16), two runs into one output (19), a full disk (21), a reference read for its grid only
and a constant moving image (27), and -o / --points that are not what they should be (31).

The transform is made here, exactly: the moving grid is the fixed grid moved by ``SHIFT``,
the forward field is ``SHIFT`` everywhere and the inverse ``-SHIFT``."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from ddmr.cli import main
from ddmr.errors import InputError
from ddmr.io.fields import save_displacement
from ddmr.io.images import save_image
from ddmr.spatial.grid import LPS_FLIP, Geometry
from register_helpers import refused_by, write_csv

SHAPE = (16, 16, 16)
SHIFT = np.array([6.0, 4.0, -2.0])
FIXED = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), SHAPE)


def moved_grid(geometry: Geometry, offset) -> Geometry:
    affine = geometry.affine.copy()
    affine[:3, 3] += np.asarray(offset, dtype=np.float64)
    return Geometry(affine, geometry.shape)


MOVING = moved_grid(FIXED, SHIFT)


def constant_field(vector, geometry: Geometry) -> np.ndarray:
    return np.broadcast_to(np.asarray(vector, np.float32)[:, None, None, None],
                           (3, *geometry.shape)).copy()


def write_transform(folder: Path, forward: np.ndarray | None = None,
                    inverse: np.ndarray | None = None, with_inverse: bool = True,
                    moving: Geometry = MOVING) -> Path:
    """A transform folder: ``forward`` on FIXED, ``inverse`` on ``moving`` (default: the
    exact pair)."""
    folder.mkdir(parents=True)
    forward = constant_field(SHIFT, FIXED) if forward is None else forward
    save_displacement(folder / "displacement.nii.gz", forward, FIXED, units="mm")
    if with_inverse:
        inverse = constant_field(-SHIFT, moving) if inverse is None else inverse
        save_displacement(folder / "inverse_displacement.nii.gz", inverse, moving, units="mm")
    return folder


@pytest.fixture
def work(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    write_transform(tmp_path / "t")
    save_image(tmp_path / "moving.nii.gz", rng.random(SHAPE), MOVING)
    save_image(tmp_path / "fixed.nii.gz", rng.random(SHAPE), FIXED)
    (tmp_path / "out").mkdir()
    return tmp_path


def refused(argv: list[str], capsys) -> str:
    """Run ``ddmr apply ARGV``: exit status 2 and one line, returned."""
    return refused_by("apply", argv, capsys)


# ---------------------------------------------------------------- item 13: out of reach


def test_an_image_or_reference_the_transform_does_not_reach_is_refused(work, capsys):
    """Item 13: both gave an all-zero (or untransformed) image with exit 0."""
    rng = np.random.default_rng(1)
    far = work / "far.nii.gz"
    save_image(far, rng.random(SHAPE), moved_grid(MOVING, [1000, 0, 0]))
    out = work / "out" / "w.nii.gz"
    line = refused(["--transform", str(work / "t"), "--moving", str(far), "-o", str(out)],
                   capsys)
    assert f"{far}: does not overlap where the transform takes the output grid (they are " \
           "969 mm apart; the result would be empty): is it an image in the moving " \
           "image's space?" in line, line
    line = refused(["--transform", str(work / "t"), "--moving", str(work / "moving.nii.gz"),
                    "--reference", str(far), "-o", str(out)], capsys)
    assert f"{far}: does not overlap the transform's fixed grid, where the registration " \
           "is defined (they are 975 mm apart)" in line, line
    line = refused(["--transform", str(work / "t"), "--moving", str(work / "fixed.nii.gz"),
                    "--inverse", "--reference", str(far), "-o", str(out)], capsys)
    assert "does not overlap the transform's moving grid" in line, line
    # points: none in the grid where the field is defined (none would move)
    points = write_csv(work / "far.csv", ["x_ras", "y_ras", "z_ras"], [[1000, 0, 0]])
    line = refused(["--transform", str(work / "t"), "--points", str(points), "-o",
                    str(work / "out" / "p.csv")], capsys)
    assert f"{points}: no point lies in the transform's moving grid" in line, line
    assert list((work / "out").iterdir()) == []
    # an image that overlaps in part is warped
    assert main(["apply", "--transform", str(work / "t"), "--moving",
                 str(work / "moving.nii.gz"), "-o", str(out)]) == 0


# ---------------------------------------------------------------- item 14: RAS and LPS


def test_a_point_file_with_both_conventions_maps_both_or_is_refused(work, capsys):
    """Item 14: only the first set of columns was mapped; the LPS ones kept the old
    points, so the file contradicted itself. Sets that agree are all mapped; sets that
    disagree are refused (which one to map cannot be known)."""
    ras = MOVING.index_to_world(np.array([[3.0, 4.0, 5.0], [8.0, 9.0, 10.0]]))
    lps = ras @ LPS_FLIP.T
    header = ["id", "x_ras", "y_ras", "z_ras", "L", "P", "S"]
    points = write_csv(work / "both.csv", header,
                       [[f"p{k}", *ras[k], *lps[k]] for k in range(2)])
    out = work / "out" / "both.csv"
    assert main(["apply", "--transform", str(work / "t"), "--points", str(points), "-o",
                 str(out)]) == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == header
    values = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    expected = ras - SHIFT  # moving points go to the fixed space through the inverse
    np.testing.assert_allclose(values[:, :3], expected, atol=1e-5)
    np.testing.assert_allclose(values[:, 3:], expected @ LPS_FLIP.T, atol=1e-5)
    # the LPS columns naming other points: refused
    wrong = write_csv(work / "wrong.csv", header,
                      [[f"p{k}", *ras[k], *ras[k]] for k in range(2)])
    line = refused(["--transform", str(work / "t"), "--points", str(wrong), "-o",
                    str(work / "out" / "wrong.csv")], capsys)
    assert f"{wrong}: columns x_ras,y_ras,z_ras and L,P,S give different points (row 1: " \
           "RAS (12, 12, 8) and (-12, -12, 8)), so which to map is unclear; keep one set " \
           "of coordinate columns" in line, line
    assert not (work / "out" / "wrong.csv").exists()


# ------------------------------------------------------- item 16: the folder's own files


@pytest.mark.parametrize("case", ["one voxel", "every voxel", "forward only",
                                  "inverse 1e30", "another inverse", "far inverse"])
def test_a_transform_folder_whose_files_do_not_belong_together_is_refused(work, capsys,
                                                                          case):
    """Item 16: a field set to 1e30 mm gave exit 0 and a zero image; an inverse from
    another run went unnoticed."""
    forward, inverse = constant_field(SHIFT, FIXED), constant_field(-SHIFT, MOVING)
    moving = MOVING
    expected = "displacement.nii.gz: not a plausible registration (the file is damaged?): "
    if case in ("one voxel", "every voxel", "forward only"):
        if case == "one voxel":
            forward[0, 3, 4, 5] = 1e30
        else:
            forward[:] = 1e30
        expected += "displacements of up to "
    elif case == "inverse 1e30":
        inverse[1, 2, 2, 2] = -1e30
        expected = "inverse_" + expected + "displacements of up to 1e+30 mm, over 100 " \
                   "times its field of view (55 mm)"
    elif case == "another inverse":  # another registration's: 10 mm off
        inverse += np.array([10.0, 0, 0], np.float32)[:, None, None, None]
        expected = ": displacement.nii.gz and inverse_displacement.nii.gz are not one " \
                   "registration's pair: forward then inverse moves points by 10 mm " \
                   "(median), over 2 mm (1 voxel); was one of them replaced by another run's?"
    else:  # the inverse of a registration whose moving image was elsewhere
        moving = moved_grid(MOVING, [0, 500, 0])
        expected = "displacement.nii.gz takes no point of its grid into the grid of " \
                   "inverse_displacement.nii.gz (the nearest lands 469 mm from it)"
    folder = write_transform(work / "bad", forward, inverse,
                             with_inverse=case != "forward only", moving=moving)
    out = work / "out" / "w.nii.gz"
    line = refused(["--transform", str(folder), "--moving", str(work / "moving.nii.gz"),
                    "-o", str(out)], capsys)
    assert expected in line, line
    assert list((work / "out").iterdir()) == []
    from ddmr.registration.apply import SavedTransform

    with pytest.raises(InputError, match=r"not a plausible registration|not one registration"):
        SavedTransform.load(folder)


# ------------------------------------------------------------- item 19: one output, two


def test_of_two_apply_runs_into_one_output_exactly_one_fails(work, capsys, monkeypatch):
    """Item 19: both exited 0 and the second replaced the first. The second run starts
    while the first is at work (both past their early check)."""
    import ddmr.registration.apply as apply_module

    out = work / "out" / "w.nii.gz"
    argv = ["apply", "--transform", str(work / "t"), "--moving", str(work / "moving.nii.gz"),
            "-o", str(out)]
    real = apply_module.apply_to_image
    started: list[bool] = []
    inner: list[int] = []

    def first_at_work(*args, **kwargs):
        if not started:
            started.append(True)
            inner.append(main(argv))  # the second run, meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(apply_module, "apply_to_image", first_at_work)
    outer = main(argv)
    err = capsys.readouterr().err
    assert (inner[0], outer) == (2, 0), err
    assert f"{out}: another ddmr process is writing this output now" in err, err
    monkeypatch.setattr(apply_module, "apply_to_image", real)
    before = out.read_bytes()
    # a run whose early check came before the first wrote, and that locks after it
    import ddmr.io.files

    monkeypatch.setattr(ddmr.io.files, "check_output_file", lambda path, overwrite: path)
    line = refused(argv[1:], capsys)
    assert f"{out}: already exists (written by another process meanwhile?)" in line, line
    assert out.read_bytes() == before
    assert sorted(p.name for p in (work / "out").iterdir()) == ["w.nii.gz"]


# ---------------------------------------------------------------- item 21: full disk


@pytest.mark.parametrize("extension", [".nrrd", ".mha"])
def test_apply_onto_a_full_disk_is_one_line(work, tmp_path, capfd, extension):
    """Item 21: ITK's writers gave a traceback (NRRD) or MetaIO's own line on file
    descriptor 2 before ddmr's (MHA). 8 KB left: the probe passes, the image does not fit.
    ``capfd``: what the C++ library prints is caught too."""
    from test_reliability_outputs import fill, tmpfs

    rng = np.random.default_rng(2)
    save_image(work / "noise.nii.gz", rng.random(SHAPE), MOVING)  # does not compress
    with tmpfs(tmp_path / "disk", "1M") as disk:
        fill(disk, 8 << 10)
        out = disk / f"w{extension}"
        line = refused(["--transform", str(work / "t"), "--moving",
                        str(work / "noise.nii.gz"), "-o", str(out)], capfd)
        assert line == f"ddmr apply: error: {out}: cannot write: No space left on device " \
                       "(nothing was written; an existing output is unchanged)", line
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ------------------------------------------------- item 27: the reference's grid only


def test_the_reference_is_read_for_its_grid_and_a_constant_image_is_warped(work, capsys):
    """Item 27: a reference with NaN voxels (or constant) was refused for its values,
    though only its grid is used; an all-zero moving image was refused."""
    import nibabel as nib

    values = np.ones((12, 10, 8), np.float32)
    values[0, 0, 0] = np.nan
    reference_grid = Geometry(np.diag([2.5, 2.5, 2.5, 1.0]), values.shape)
    nib.save(nib.Nifti1Image(values, reference_grid.affine), work / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), MOVING.affine), work / "zero.nii.gz")
    out = work / "out" / "w.nii.gz"
    assert main(["apply", "--transform", str(work / "t"), "--moving",
                 str(work / "moving.nii.gz"), "--reference", str(work / "nan.nii.gz"), "-o",
                 str(out)]) == 0, capsys.readouterr().err
    image = nib.load(out)
    assert image.shape == values.shape
    np.testing.assert_allclose(image.affine, reference_grid.affine)
    assert np.isfinite(np.asarray(image.dataobj)).all()
    out.unlink()
    save_image(work / "nan.mha", values, reference_grid)  # the ITK reader: its header too
    assert main(["apply", "--transform", str(work / "t"), "--moving",
                 str(work / "moving.nii.gz"), "--reference", str(work / "nan.mha"), "-o",
                 str(out)]) == 0, capsys.readouterr().err
    assert nib.load(out).shape == values.shape
    out.unlink()
    assert main(["apply", "--transform", str(work / "t"), "--moving",
                 str(work / "zero.nii.gz"), "-o", str(out)]) == 0, capsys.readouterr().err
    assert not np.asarray(nib.load(out).dataobj).any()
    # what the grid needs is still checked: a 4D reference
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), FIXED.affine),
             work / "4d.nii.gz")
    line = refused(["--transform", str(work / "t"), "--moving", str(work / "moving.nii.gz"),
                    "--reference", str(work / "4d.nii.gz"), "-o", str(work / "o4.nii.gz")],
                   capsys)
    assert "image has shape (16, 16, 16, 2), expected a 3D volume" in line, line


# ----------------------------------------------------- item 31: -o and --points names


def test_output_and_points_names_are_checked(work, capsys):
    """Item 31: --points -o x.nii.gz wrote CSV text under an image name; a folder or
    /dev/null given as --points was "no such file"."""
    points = write_csv(work / "p.csv", ["x_ras", "y_ras", "z_ras"],
                       [list(MOVING.index_to_world(np.array([4.0, 4.0, 4.0])))])
    transform = ["--transform", str(work / "t")]
    cases = {
        ("--points", str(points), "-o", str(work / "out" / "x.nii.gz")):
            f"{work / 'out' / 'x.nii.gz'}: --points writes a CSV file of points; give -o a "
            "name ending in .csv",
        ("--moving", str(work / "moving.nii.gz"), "-o", str(work / "out" / "x.csv")):
            f"{work / 'out' / 'x.csv'}: cannot write file type '.csv'",
        ("--points", str(work / "out"), "-o", str(work / "out" / "x.csv")):
            f"{work / 'out'}: is a directory, expected a CSV file of points",
        ("--points", "/dev/null", "-o", str(work / "out" / "x.csv")):
            "/dev/null: empty file (expected a header row naming the coordinate columns)",
        ("--points", str(work / "nosuch.csv"), "-o", str(work / "out" / "x.csv")):
            f"{work / 'nosuch.csv'}: no such file",
    }
    for argv, expected in cases.items():
        line = refused([*transform, *argv], capsys)
        assert expected in line, line
    assert list((work / "out").iterdir()) == []
    shutil.rmtree(work / "out")
