"""``ddmr augment`` on a small synthetic NIfTI: outputs, refusals, and the exported
displacement applied by ANTs gives back the fixed image."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import smooth_volume
from ddmr.cli import main

SHAPE = (40, 36, 32)
# 4.5 x 4 x 3.5 mm voxels, a flipped first axis and an oblique offset
AFFINE = np.array([[-4.5, 0, 0, 60.0], [0, 4.0, 0, -70.0], [0, 0, 3.5, 12.0], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("augment_in")
    volume = smooth_volume(SHAPE, seed=2, blobs=10)[0, 0].numpy() * 900 + 100
    labels = np.digitize(volume, [400, 650, 850]).astype(np.uint8) * 2  # {0, 2, 4, 6}
    nib.save(nib.Nifti1Image(volume.astype(np.float32), AFFINE), folder / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, AFFINE), folder / "seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def output(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("augment_out") / "pair"
    status = main(["augment", str(inputs / "image.nii.gz"), "--labels", str(inputs / "seg.nii.gz"),
                   "-o", str(out), "--seed", "3", "--no-intensity"])
    assert status == 0
    return out


def test_writes_every_output_on_the_input_grid(output, inputs):
    names = {p.name for p in output.iterdir()}
    assert names == {"fixed.nii.gz", "moving.nii.gz", "fixed_seg.nii.gz", "moving_seg.nii.gz",
                     "displacement.nii.gz", "preview.png", "parameters.json"}
    for name in ("fixed.nii.gz", "moving.nii.gz", "fixed_seg.nii.gz", "moving_seg.nii.gz"):
        image = nib.load(output / name)
        assert image.shape == SHAPE
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)
    field = nib.load(output / "displacement.nii.gz")
    assert field.shape == (*SHAPE, 1, 3) and field.header.get_intent()[0] == "vector"
    seg = np.asarray(nib.load(output / "moving_seg.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 2, 4, 6}
    record = json.loads((output / "parameters.json").read_text())
    assert record["seed"] == 3 and record["spacing_mm"] == pytest.approx([4.5, 4.0, 3.5])
    assert (output / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]


def test_ants_applies_the_displacement_and_gets_the_fixed_image_back(output):
    ants = pytest.importorskip("ants")
    fixed = ants.image_read(str(output / "fixed.nii.gz"))
    moving = ants.image_read(str(output / "moving.nii.gz"))
    warped = ants.apply_transforms(fixed=fixed, moving=moving,
                                   transformlist=[str(output / "displacement.nii.gz")],
                                   interpolator="linear")
    # the field of view: voxels whose ground-truth source point lies inside the moving grid
    u = np.asarray(nib.load(output / "displacement.nii.gz").dataobj)[:, :, :, 0, :]
    matrix = np.diag([-1.0, -1.0, 1.0]) @ AFFINE[:3, :3]  # voxel -> LPS mm
    u_vox = np.einsum("ab,ijkb->aijk", np.linalg.inv(matrix), u)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"))
    source = grid + u_vox
    inside = np.all((source >= 1) & (source <= np.array(SHAPE).reshape(3, 1, 1, 1) - 2), axis=0)
    assert inside.mean() > 0.3
    a, b = warped.numpy()[inside], fixed.numpy()[inside]
    assert np.corrcoef(a, b)[0, 1] >= 0.99
    # without the transform the images do not match
    assert np.corrcoef(moving.numpy()[inside], b)[0, 1] < 0.95


def test_refuses_a_non_empty_output_unless_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    image = str(inputs / "image.nii.gz")
    assert main(["augment", image, "-o", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["augment", image, "-o", str(out), "--overwrite", "--no-nonrigid"]) == 0
    assert not (out / "keep.txt").exists() and (out / "moving.nii.gz").exists()


def test_bad_input_names_the_file_and_leaves_nothing(inputs, tmp_path, capsys):
    out = tmp_path / "never"
    missing = tmp_path / "missing.nii.gz"
    assert main(["augment", str(missing), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), AFFINE), other)
    assert main(["augment", str(inputs / "image.nii.gz"), "--labels", str(other),
                 "-o", str(out)]) == 2
    assert str(other) in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".never*"))
