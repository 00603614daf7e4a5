"""``ddmr prepare``: resampling, cropping, normalisation, HDF5 output, splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from ddmr.cli import main
from ddmr.data.adapters import Source
from ddmr.data.dataset import read_split, subject_geometries, to_native
from ddmr.errors import ConfigError, InputError
from ddmr.io.images import load_labels, save_image, save_labels
from ddmr.prepare.dataset import prepare_dataset
from ddmr.prepare.recipe import PrepareOptions
from ddmr.spatial.grid import Geometry, image_box, target_grid

SMALL = PrepareOptions(size=(24, 24, 24), spacing=2.0)


def make_geometry(shape=(20, 18, 12), spacing=(2.0, 2.4, 3.5), angles=(10.0, -20.0, 15.0),
                  centre=(5.0, -8.0, 12.0)) -> Geometry:
    """An oblique, anisotropic grid centred near ``centre`` (RAS mm)."""
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(
        spacing)
    half = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ half
    return Geometry(affine, shape)


def make_subject(geometry: Geometry, seed: int = 0, radius: float = 11.0,
                 hu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels defined in world space around the grid centre: an ellipsoid
    'organ' (label 1) with a smaller inner part (label 2) and a smooth background."""
    rng = np.random.default_rng(seed)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1)
    world = geometry.index_to_world(index)
    centre = geometry.index_to_world((np.asarray(geometry.shape) - 1) / 2.0)
    offset = (world - centre - rng.uniform(-2, 2, 3)) / np.array([1.0, 0.8, 1.2])
    distance = np.linalg.norm(offset, axis=-1)
    labels = np.where(distance < radius, 1, 0).astype(np.uint8)
    labels[distance < radius / 2.5] = 2
    image = 0.3 + 0.4 * np.exp(-((world - centre) ** 2).sum(-1) / (2 * 25.0**2))
    image = image + 0.5 * (labels == 1) + 0.2 * (labels == 2)
    if hu:
        image = image * 600.0 - 500.0
    return image.astype(np.float32), labels


def write_folder_dataset(root: Path, count: int = 5, labels: bool = True,
                         **geometry_args) -> Path:
    """``root/images/<id>.nii.gz`` (+ ``root/labels``) with ``count`` subjects."""
    (root / "images").mkdir(parents=True)
    if labels:
        (root / "labels").mkdir()
    for n in range(count):
        geometry = make_geometry(**geometry_args)
        image, label_map = make_subject(geometry, seed=n)
        save_image(root / "images" / f"case{n:02d}.nii.gz", image, geometry)
        if labels:
            save_labels(root / "labels" / f"case{n:02d}.nii.gz", label_map, geometry)
    return root


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --------------------------------------------------------------------------- end to end


def test_prepare_folder_dataset_writes_h5_split_and_options(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=5)
    out = tmp_path / "out"
    summary = prepare_dataset(source, out, SMALL, progress=False)
    assert listing(out) == ["dataset.h5", "prepare.json", "split.json"]
    assert listing(tmp_path) == ["in", "out"]  # no temporary folder left
    with h5py.File(out / "dataset.h5", "r") as h5:
        assert sorted(h5) == [f"case{n:02d}" for n in range(5)]
        group = h5["case00"]
        image, labels = group["image"][()], group["labels"][()]
        assert image.shape == labels.shape == (24, 24, 24)
        assert image.dtype == np.float32 and labels.dtype == np.uint8
        assert image.min() == 0.0 and image.max() == 1.0
        assert set(np.unique(labels)) == {0, 1, 2}
        affine = group.attrs["affine"]
        assert np.allclose(affine[:3, :3], np.diag(group.attrs["spacing"]))  # RAS-aligned
        assert tuple(group.attrs["native_shape"]) == (20, 18, 12)
        assert group.attrs["label_source"] == "file"
    split = read_split(out)
    assert sorted(i for ids in split.values() for i in ids) == [f"case{n:02d}" for n in range(5)]
    assert all(split[name] for name in ("train", "val", "test"))
    recorded = json.loads((out / "prepare.json").read_text())
    assert recorded["options"]["size"] == [24, 24, 24]
    assert len(recorded["subjects"]) == 5 == len(summary["subjects"])


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        prepare_dataset(source, out, SMALL, progress=False)
    assert listing(out) == ["keep.txt"]
    prepare_dataset(source, out, SMALL, overwrite=True, progress=False)
    assert listing(out) == ["dataset.h5", "prepare.json", "split.json"]
    assert listing(tmp_path) == ["in", "out"]


def test_float16_storage(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=3, labels=False)
    prepare_dataset(source, tmp_path / "out", PrepareOptions(size=(16, 16, 16), dtype="float16"),
                    progress=False)
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as h5:
        assert h5["case01"]["image"].dtype == np.float16
        assert "labels" not in h5["case01"]
        assert h5["case01"].attrs["label_source"] == "none"


# ------------------------------------------------------------------------------ geometry


def test_prepared_labels_map_back_onto_native_oblique_anisotropic_grid(tmp_path):
    """The stored geometry maps prepared volumes back onto the original (Dice >= 0.95)."""
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    geometry = make_geometry(shape=(44, 40, 18), spacing=(0.9, 1.1, 2.6),
                             angles=(25.0, -10.0, 35.0), centre=(-30.0, 12.0, 40.0))
    image, labels = make_subject(geometry, radius=13.0)
    save_image(root / "images" / "s.nii.gz", image, geometry)
    save_labels(root / "labels" / "s.nii.gz", labels, geometry)
    options = PrepareOptions(size=(64, 64, 64), spacing=1.0, split=(1.0, 0.0, 0.0))
    prepare_dataset(root, tmp_path / "out", options, progress=False)
    prepared, native = subject_geometries(tmp_path / "out", "s")
    assert native.isclose(geometry, 1e-4)
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as h5:
        prepared_labels = h5["s"]["labels"][()]
        prepared_image = h5["s"]["image"][()]
    back = to_native(prepared_labels, prepared, native, order=0)
    for value in (1, 2):
        assert dice(back == value, labels == value) >= 0.95
    # the intensities overlay too (normalised, so compare by correlation)
    image_back = to_native(prepared_image, prepared, native, order=1)
    assert np.corrcoef(image_back.ravel(), image.ravel())[0, 1] > 0.95
    # and the label's world centroid is kept to a fraction of a voxel
    centroid_native = geometry.index_to_world(np.argwhere(labels == 2).mean(0))
    centroid_prepared = prepared.index_to_world(np.argwhere(prepared_labels == 2).mean(0))
    assert np.linalg.norm(centroid_native - centroid_prepared) < 0.5


@pytest.mark.parametrize(("mode", "expected"), [("fit", None), ("scale", None), ("pad", 1.0)])
def test_resize_modes(mode, expected):
    geometry = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (50, 30, 20))  # 100 x 60 x 40 mm
    box = image_box(geometry)
    grid = target_grid(box, (32, 32, 32), 1.0, mode)
    spacing = grid.spacing[0]
    if mode == "pad":
        assert spacing == expected
    else:
        assert spacing == pytest.approx(100.0 / 32)
    small = target_grid(box, (128, 128, 128), 1.0, mode)
    assert small.spacing[0] == pytest.approx(100.0 / 128 if mode == "scale" else 1.0)
    # the grid is centred on the box
    centre = small.index_to_world((np.asarray(small.shape) - 1) / 2.0)
    assert np.allclose(centre, (box[0] + box[1]) / 2)


def test_crop_around_label_with_margin(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=3)
    options = PrepareOptions(size=(32, 32, 32), spacing=0.5, crop_labels=(2,), crop_margin=3.0)
    prepare_dataset(source, tmp_path / "out", options, progress=False)
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as h5:
        labels = h5["case00"]["labels"][()]
        spacing = h5["case00"].attrs["spacing"][0]
    inner = np.argwhere(labels == 2)
    assert len(inner) > 0
    # label 2 (~9 mm across) plus 3 mm each side fills the grid along its longest side
    extent = (inner.max(0) - inner.min(0) + 1) * spacing
    assert np.max(extent) + 6.0 == pytest.approx(32 * spacing, abs=3 * spacing)
    assert spacing > 0.5  # fit mode coarsened the requested 0.5 mm to make the box fit


def test_ct_window_clips_then_normalises(tmp_path):
    root = tmp_path / "in"
    (root / "images").mkdir(parents=True)
    geometry = make_geometry()
    image, _ = make_subject(geometry, hu=True)  # about -320 .. +400 HU
    save_image(root / "images" / "ct.nii.gz", image, geometry)
    options = PrepareOptions(size=(24, 24, 24), spacing=2.0, ct_window=(-100.0, 200.0))
    prepare_dataset(root, tmp_path / "out", options, progress=False)
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as h5:
        prepared = h5["ct"]["image"][()]
        assert tuple(h5["ct"].attrs["intensity_range"]) == (-100.0, 200.0)
    assert prepared.min() == 0.0 and prepared.max() == 1.0
    # the padding outside the scan is the window's low end
    assert prepared[0, 0, 0] == 0.0


@pytest.mark.parametrize("kind", ["json", "csv"])
def test_merge_labels(tmp_path, kind):
    source = write_folder_dataset(tmp_path / "in", count=3)
    if kind == "json":
        mapping = tmp_path / "map.json"
        mapping.write_text(json.dumps({"1": 5, "2": 7}))
    else:
        mapping = tmp_path / "map.csv"
        mapping.write_text("old,new\n1,5\n")
    options = PrepareOptions(size=(16, 16, 16), spacing=3.0, merge_labels=str(mapping))
    prepare_dataset(source, tmp_path / "out", options, progress=False)
    with h5py.File(tmp_path / "out" / "dataset.h5", "r") as h5:
        values = set(np.unique(h5["case00"]["labels"][()]).tolist())
    assert values == ({0, 5, 7} if kind == "json" else {0, 5})  # csv: unlisted 2 -> 0


# ----------------------------------------------------------------------------- bad input


def _corrupt(root: Path) -> Path:
    path = root / "images" / "case01.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return path


def _not_3d(root: Path) -> Path:
    path = root / "images" / "case01.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(6, 7).astype(np.float32), np.eye(4)), str(path))
    return path


def _geometry_mismatch(root: Path) -> Path:
    path = root / "labels" / "case01.nii.gz"
    labels, geometry = load_labels(path)
    affine = geometry.affine.copy()
    affine[:3, 3] += 4.0
    save_labels(path, labels, Geometry(affine, geometry.shape))
    return path


def _labels_too_large(root: Path) -> Path:
    path = root / "labels" / "case01.nii.gz"
    labels, geometry = load_labels(path)
    image = nib.Nifti1Image(labels.astype(np.int16) * 200, geometry.affine)
    nib.save(image, str(path))
    return path


def _labels_fractional(root: Path) -> Path:
    path = root / "labels" / "case01.nii.gz"
    labels, geometry = load_labels(path)
    nib.save(nib.Nifti1Image(labels.astype(np.float32) * 0.5, geometry.affine), str(path))
    return path


def _empty_crop(root: Path) -> Path:
    path = root / "labels" / "case01.nii.gz"
    labels, geometry = load_labels(path)
    save_labels(path, np.where(labels == 2, 1, labels), geometry)  # no label 2 left
    return path


BAD_INPUT = {
    "unreadable": (_corrupt, "cannot read"),
    "not_3d": (_not_3d, "expected a 3D volume"),
    "geometry_mismatch": (_geometry_mismatch, "affine differs"),
    "labels_too_large": (_labels_too_large, "0..255"),
    "labels_fractional": (_labels_fractional, "non-integer"),
    "empty_crop": (_empty_crop, "empty crop mask"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, case):
    source = write_folder_dataset(tmp_path / "in", count=3)
    spoil, problem = BAD_INPUT[case]
    bad = spoil(source)
    options = PrepareOptions(size=(16, 16, 16), spacing=3.0, crop_labels=(2,))
    with pytest.raises(InputError) as error:
        prepare_dataset(source, tmp_path / "out", options, progress=False)
    message = str(error.value)
    assert str(bad) in message and problem in message and "\n" not in message
    assert listing(tmp_path) == ["in"]


def test_bad_input_keeps_an_existing_output_when_overwriting(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=3)
    prepare_dataset(source, tmp_path / "out", SMALL, progress=False)
    before = (tmp_path / "out" / "dataset.h5").read_bytes()
    _corrupt(source)
    with pytest.raises(InputError):
        prepare_dataset(source, tmp_path / "out", SMALL, overwrite=True, progress=False)
    assert (tmp_path / "out" / "dataset.h5").read_bytes() == before
    assert listing(tmp_path) == ["in", "out"]


def test_crop_without_labels_is_an_input_error(tmp_path):
    source = write_folder_dataset(tmp_path / "in", count=2, labels=False)
    with pytest.raises(InputError, match="needs labels"):
        prepare_dataset(source, tmp_path / "out",
                        PrepareOptions(size=(16, 16, 16), crop_labels=(1,)), progress=False)


@pytest.mark.parametrize("options", [
    PrepareOptions(spacing=0.0), PrepareOptions(size=(1, 8, 8)), PrepareOptions(resize="zoom"),
    PrepareOptions(ct_window=(100.0, -100.0)), PrepareOptions(atlas="a.nii.gz"),
    PrepareOptions(split=(0.5, 0.5, 0.5)),
])
def test_bad_options_are_config_errors(tmp_path, options):
    with pytest.raises(ConfigError):
        prepare_dataset(tmp_path, tmp_path / "out", options, progress=False)
    assert not (tmp_path / "out").exists()


def test_sources_can_be_passed_directly(tmp_path):
    geometry = make_geometry()
    image, labels = make_subject(geometry)
    save_image(tmp_path / "a.nii.gz", image, geometry)
    save_labels(tmp_path / "a_seg.nii.gz", labels, geometry)
    sources = [Source("a", "a", tmp_path / "a.nii.gz", tmp_path / "a_seg.nii.gz")]
    summary = prepare_dataset(tmp_path, tmp_path / "out", SMALL, progress=False,
                              sources=sources)
    assert summary["subjects"][0]["label_source"] == "file"


# ----------------------------------------------------------------------------------- CLI


def test_cli_prepare(tmp_path, capsys):
    source = write_folder_dataset(tmp_path / "in", count=4)
    out = tmp_path / "out"
    status = main(["prepare", str(source), "-o", str(out), "--size", "16", "--spacing", "3",
                   "--split", ".5,.25,.25", "--seed", "3", "--ct-window=-1,2",
                   "--no-progress"])
    assert status == 0
    assert "prepared 4 images (4 with labels)" in capsys.readouterr().out
    assert json.loads((out / "split.json").read_text())["seed"] == 3
    # refused without --overwrite: exit status 2 and one line naming the folder
    assert main(["prepare", str(source), "-o", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert str(out) in error and "already exists" in error and "\n" not in error
    assert main(["prepare", str(source), "-o", str(tmp_path / "x"), "--split", "1,1",
                 "--no-progress"]) == 2
    assert "--split" in capsys.readouterr().err
