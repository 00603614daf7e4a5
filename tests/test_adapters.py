"""Dataset layouts, each on a tiny fabricated folder in its real layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddmr.data.adapters import detect_layout, discover
from ddmr.errors import InputError
from ddmr.io.images import save_image, save_labels
from ddmr.prepare.dataset import prepare_dataset
from ddmr.prepare.recipe import PrepareOptions
from ddmr.spatial.grid import Geometry

GEOMETRY = Geometry(np.diag([3.0, 3.0, 3.0, 1.0]), (6, 7, 5))


def image_file(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(path, np.random.default_rng(seed).random(GEOMETRY.shape), GEOMETRY)
    return path


def label_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[2:4, 2:5, 1:4] = 1
    save_labels(path, labels, GEOMETRY)
    return path


def test_folder_layout_matches_labels_by_name(tmp_path):
    for name in ("b", "a", "c"):
        image_file(tmp_path / "images" / f"{name}.nii.gz")
    label_file(tmp_path / "labels" / "a.nii.gz")
    label_file(tmp_path / "labels" / "b.nii.gz")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    sources = discover(tmp_path, "folder")
    assert [s.id for s in sources] == ["a", "b", "c"]
    assert sources[0].labels == tmp_path / "labels" / "a.nii.gz"
    assert sources[2].labels is None
    assert detect_layout(tmp_path) == "folder"


def test_folder_layout_reads_the_bundled_sample_layout(tmp_path):
    # the bundled cohort is stored as sample/brain/images/<id>.nii.gz + labels/<id>.nii.gz
    root = tmp_path / "brain"
    for ident in ("sub-01", "sub-02"):
        image_file(root / "images" / f"{ident}.nii.gz")
        label_file(root / "labels" / f"{ident}.nii.gz")
    sources = discover(root)
    assert [(s.id, s.labels.name) for s in sources] == [("sub-01", "sub-01.nii.gz"),
                                                        ("sub-02", "sub-02.nii.gz")]


def test_csv_layout_with_subject_column(tmp_path):
    image_file(tmp_path / "data" / "x1.nii.gz")
    image_file(tmp_path / "data" / "x2.nii.gz")
    label_file(tmp_path / "data" / "x1_seg.nii.gz")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,image,labels,subject\n"
                        "x1,data/x1.nii.gz,data/x1_seg.nii.gz,p1\n"
                        "x2,data/x2.nii.gz,,p1\n")
    sources = discover(manifest)
    assert [(s.id, s.subject) for s in sources] == [("x1", "p1"), ("x2", "p1")]
    assert sources[0].labels.name == "x1_seg.nii.gz" and sources[1].labels is None


def test_csv_layout_errors(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,path\na,b\n")
    with pytest.raises(InputError, match=r"m\.csv: manifest needs a header"):
        discover(manifest, "csv")
    manifest.write_text("id,image\na,missing.nii.gz\n")
    with pytest.raises(InputError, match=r"missing\.nii\.gz: image listed .* does not exist"):
        discover(manifest, "csv")
    image_file(tmp_path / "a.nii.gz")
    manifest.write_text("id,image\na,a.nii.gz\na,a.nii.gz\n")
    with pytest.raises(InputError, match="id 'a' also used"):
        discover(manifest, "csv")


def test_ixi_layout_takes_t1_and_labels_folder(tmp_path):
    root = tmp_path / "IXI-T1"
    image_file(root / "IXI002-Guys-0828-T1.nii.gz")
    image_file(root / "IXI012-HH-1211-T1.nii.gz")
    image_file(root / "IXI002-Guys-0828-T2.nii.gz")  # other modality: ignored
    labels = tmp_path / "seg"
    label_file(labels / "IXI012.nii.gz")
    assert detect_layout(root) == "ixi"
    sources = discover(root, "ixi", labels_dir=labels)
    assert [s.id for s in sources] == ["IXI002", "IXI012"]
    assert sources[0].labels is None and sources[1].labels == labels / "IXI012.nii.gz"
    with pytest.raises(InputError, match="no IXI T1 images"):
        discover(tmp_path / "seg", "ixi")


def test_msd_layout(tmp_path):
    root = tmp_path / "Task08_HepaticVessel"
    entries = []
    for n in (1, 4):
        image_file(root / "imagesTr" / f"hepaticvessel_{n:03d}.nii.gz")
        label_file(root / "labelsTr" / f"hepaticvessel_{n:03d}.nii.gz")
        entries.append({"image": f"./imagesTr/hepaticvessel_{n:03d}.nii.gz",
                        "label": f"./labelsTr/hepaticvessel_{n:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "HepaticVessel", "modality": {"0": "CT"}, "numTraining": 2,
        "training": entries, "test": ["./imagesTs/hepaticvessel_002.nii.gz"]}))
    assert detect_layout(root) == "msd"
    sources = discover(root)
    assert [s.id for s in sources] == ["hepaticvessel_001", "hepaticvessel_004"]
    assert all(s.labels is not None for s in sources)


def test_learn2reg_layout_groups_scans_by_subject(tmp_path):
    root = tmp_path / "AbdomenCTCT"
    entries = []
    for case in (1, 2, 3):
        for scan in (0, 1):
            name = f"AbdomenCTCT_{case:04d}_{scan:04d}.nii.gz"
            image_file(root / "imagesTr" / name, seed=case * 2 + scan)
            label_file(root / "labelsTr" / name)
            entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "AbdomenCTCT_dataset.json").write_text(json.dumps({"training": entries}))
    assert detect_layout(root) == "learn2reg"
    sources = discover(root)
    assert len(sources) == 6
    assert {s.subject for s in sources} == {"AbdomenCTCT_0001", "AbdomenCTCT_0002",
                                            "AbdomenCTCT_0003"}
    prepare_dataset(root, tmp_path / "out", PrepareOptions(size=(8, 8, 8), spacing=3.0),
                    progress=False)
    split = json.loads((tmp_path / "out" / "split.json").read_text())
    for name in ("train", "val", "test"):
        subjects = {i.rsplit("_", 1)[0] for i in split[name]}
        assert len(split[name]) == 2 * len(subjects)  # both scans of a subject together


def test_dataset_json_errors(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"dataset\.json: cannot read"):
        discover(tmp_path, "msd")
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"label": "x"}]}))
    with pytest.raises(InputError, match='has no "image"'):
        discover(tmp_path, "msd")


def test_discover_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        discover(tmp_path / "nope")
    with pytest.raises(InputError, match="cannot tell the dataset layout"):
        discover(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="no images found"):
        discover(tmp_path, "folder")
