"""Rebuild the bundled abdominal CT in ``src/ddmr/data/sample/ct`` from TotalSegmentator's
source archive.

Run once by a developer (not at install time, not by the tests). It needs ``itk`` (to read
the DICOM series; ``pip install itk-elastix`` brings it) and downloads, with ``pip download
--no-deps --no-binary :all:`` into ``--workdir`` (never installed):

    totalsegmentator==2.18.0   sdist: tests/reference_files/ (Apache-2.0)

Usage:

    python scripts/build_sample_ct.py [--workdir /tmp/ddmr-ct-src] [--out src/ddmr/data/sample/ct]

What it does, for the two CTs of the archive's test files (``cohort.json`` records it):

1. ``totalseg-abdomen-pelvis``: ``example_ct.nii.gz`` (3 mm, 122 x 101 x 112) with its
   61-class label map ``example_seg_fast_force_split.nii.gz`` (TotalSegmentator's own
   output of its ``total`` task, fast mode), kept on its own grid;
2. ``totalseg-upper-abdomen``: the 20-slice DICOM series ``example_ct_dicom/`` (0.98 x 0.98
   x 2 mm, 512 x 512) with ``example_seg_dicom.nii.gz`` (31 classes), read with ITK (LPS)
   and written in RAS; both resampled to about 3 x 3 x 2 mm (CT: anti-aliased cubic;
   labels: nearest) so that it stays small;
3. orientation: each image and its labels reoriented to the closest RAS axes (no
   resampling), the labels checked to lie on the image's grid;
4. intensities: Hounsfield units, clipped to [-1024, 3071], stored as int16; labels uint8,
   numbered as TotalSegmentator's ``total`` task (5 = liver);
5. ``liver-labels.json``: the ``--merge-labels`` map onto the phantoms' two labels.

The labels are a segmentation model's output, not manual tracings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np

PACKAGE, VERSION = "totalsegmentator", "2.18.0"
ARCHIVE = f"{PACKAGE}-{VERSION}"
REFERENCE = "tests/reference_files"
HU_RANGE = (-1024, 3071)
UPPER_SPACING = (3.0, 3.0, 2.0)
#: ``--merge-labels`` map onto the CT phantoms' labels (1 liver, 2 vessels): the liver,
#: and as "vessels" the large veins at the liver (portal and splenic vein, inferior vena
#: cava) -- TotalSegmentator's total task has no intrahepatic vessel tree.
LIVER_LABELS = {"5": 1, "63": 2, "64": 2}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(workdir: Path) -> Path:
    """The extracted sdist (downloaded once into ``workdir``)."""
    root = workdir / ARCHIVE
    if root.is_dir():
        return root
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"{PACKAGE}=={VERSION}", "-d", str(workdir)], check=True)
    with tarfile.open(workdir / f"{ARCHIVE}.tar.gz") as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(f"{ARCHIVE}/{REFERENCE}/example_")
                   or m.name in (f"{ARCHIVE}/LICENSE",
                                 f"{ARCHIVE}/totalsegmentator/map_to_binary.py")]
        archive.extractall(workdir, members=members, filter="data")
    return root


def class_names(root: Path) -> dict[int, str]:
    """TotalSegmentator's ``total`` task label names, read from its source (never imported)."""
    import ast

    tree = ast.parse((root / "totalsegmentator" / "map_to_binary.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "class_map":
            return {int(k): str(v) for k, v in ast.literal_eval(node.value)["total"].items()}
    raise SystemExit("class_map not found in map_to_binary.py")


def read_dicom(folder: Path) -> nib.Nifti1Image:
    """A DICOM series as a NIfTI image (ITK's LPS world turned into RAS)."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(folder))
    image = itk.imread(list(names.GetInputFileNames()), itk.SS)
    array = itk.array_from_image(image).transpose(2, 1, 0)  # (z, y, x) -> (i, j, k)
    direction = itk.array_from_matrix(image.GetDirection())
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(np.asarray(itk.spacing(image), float))
    affine[:3, 3] = np.asarray(itk.origin(image), float)
    return nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine)  # LPS -> RAS


def canonical(image: nib.Nifti1Image) -> nib.Nifti1Image:
    return nib.as_closest_canonical(image)


def on_grid(labels: nib.Nifti1Image, image: nib.Nifti1Image) -> nib.Nifti1Image:
    """``labels`` on ``image``'s grid: as they are where the grids agree, else resampled
    (nearest)."""
    if labels.shape == image.shape and np.allclose(labels.affine, image.affine, atol=1e-3):
        return labels
    from nibabel.processing import resample_from_to

    print(f"  labels resampled onto the image grid (affines differ by "
          f"{np.abs(labels.affine - image.affine).max():.3g})")
    return resample_from_to(labels, image, order=0)


def resample(image: nib.Nifti1Image, spacing: tuple[float, ...], order: int
             ) -> nib.Nifti1Image:
    """``image`` on a grid of about ``spacing`` mm spanning the same first and last voxel
    centres (ddmr's own resampling: anti-aliased cubic for the CT, nearest for labels)."""
    from ddmr.spatial.grid import Geometry, resized_grid
    from ddmr.spatial.resample import resample_to

    source = Geometry(image.affine, image.shape[:3])
    extent = (np.asarray(source.shape) - 1) * np.asarray(source.spacing)
    shape = tuple(round(float(e / s)) + 1 for e, s in zip(extent, spacing, strict=True))
    target = resized_grid(source, shape)
    data = np.asarray(image.dataobj, np.float32 if order else np.uint8)
    out = resample_to(data, source, target, order=order, cval=HU_RANGE[0] if order else 0,
                      antialias=order > 0)
    return nib.Nifti1Image(out, target.affine)


def save(image: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    out = nib.Nifti1Image(image.astype(dtype), affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, 1)
    out.set_sform(affine, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, path)


def build(workdir: Path, out: Path) -> None:
    root = fetch(workdir)
    ref = root / REFERENCE
    names = class_names(root)
    subjects = []
    sources = {
        "totalseg-abdomen-pelvis": (ref / "example_ct.nii.gz",
                                    ref / "example_seg_fast_force_split.nii.gz", None),
        "totalseg-upper-abdomen": (ref / "example_ct_dicom", ref / "example_seg_dicom.nii.gz",
                                   UPPER_SPACING),
    }
    present: set[int] = set()
    for sid, (image_path, label_path, spacing) in sources.items():
        print(sid)
        image = read_dicom(image_path) if image_path.is_dir() else nib.load(image_path)
        image = canonical(image)
        labels = on_grid(canonical(nib.load(label_path)), image)
        steps = ["reoriented to the closest RAS axes"]
        if spacing is not None:
            image, labels = resample(image, spacing, 1), resample(labels, spacing, 0)
            steps.append(f"resampled to about {spacing} mm (CT: anti-aliased cubic; labels: "
                         "nearest)")
        hu = np.clip(np.rint(np.asarray(image.dataobj)), *HU_RANGE)
        label_data = np.rint(np.asarray(labels.dataobj)).astype(np.uint8)
        steps.append(f"HU clipped to {list(HU_RANGE)}, int16; labels uint8")
        save(hu, image.affine, out / "images" / f"{sid}.nii.gz", np.int16)
        save(label_data, image.affine, out / "labels" / f"{sid}.nii.gz", np.uint8)
        found = sorted(int(v) for v in np.unique(label_data) if v)
        present.update(found)
        liver = label_data == 5
        print(f"  {hu.shape} at {np.round(image.header.get_zooms()[:3], 3)} mm, {len(found)} "
              f"classes, liver {liver.sum()} voxels, median HU in liver "
              f"{np.median(hu[liver]) if liver.any() else float('nan'):.0f}")
        files = [image_path] if image_path.is_file() else sorted(image_path.iterdir())
        subjects.append({
            "id": sid, "split": "test",
            "image": f"images/{sid}.nii.gz", "labels": f"labels/{sid}.nii.gz",
            "shape": list(hu.shape),
            "spacing_mm": [round(float(z), 4) for z in image.header.get_zooms()[:3]],
            "classes": len(found),
            "source": {"package": PACKAGE, "version": VERSION, "archive": "sdist",
                       "image": str(image_path.relative_to(root)),
                       "labels": str(label_path.relative_to(root)),
                       "sha256": {str(f.relative_to(root)): sha256(f)
                                  for f in [*files, label_path]}},
            "steps": steps})
    metadata = {
        "name": "ddmr bundled abdominal CT",
        "description": "Two real abdominal CTs from TotalSegmentator's test files, in "
                       "Hounsfield units, RAS; labels: TotalSegmentator's own automatic "
                       "segmentation (total task numbering; 5 = liver), not manual tracings.",
        "built": dt.date.today().isoformat(), "builder": "scripts/build_sample_ct.py",
        "licence": "Apache-2.0 (TotalSegmentator, Copyright Wasserthal et al.)",
        "labels": {str(k): names.get(k, f"class {k}") for k in sorted(present)},
        "subjects": subjects}
    (out / "cohort.json").write_text(json.dumps(metadata, indent=1) + "\n")
    split = {"train": [], "val": [], "test": [s["id"] for s in subjects]}
    (out / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    (out / "liver-labels.json").write_text(json.dumps(LIVER_LABELS, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ddmr-ct-src"))
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "src/ddmr/data/sample/ct")
    args = parser.parse_args()
    build(args.workdir, args.out)


if __name__ == "__main__":
    main()
