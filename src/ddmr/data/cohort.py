"""The bundled brain T1 cohort: real heads that install with ddmr (no download).

Six skull-stripped T1-weighted brain volumes from public packages (four individuals,
two population templates), each on its own 96^3 grid of 2 mm voxels (RAS axes,
centred on the brain), intensities in [0, 1], with a label map that has the same 16
labels for every subject (CSF, grey matter, white matter, and 13 subcortical structures
propagated from an MNI-space atlas). ``sample/brain/cohort.json`` records where each
volume comes from, its licence and every processing step; ``sample/LICENSES.md`` holds the
notices. ``scripts/build_sample_cohort.py`` rebuilds it all from the packages.

The folder (``sample_cohort_dir()``) has the ``folder`` layout of ``ddmr prepare``:
``images/<id>.nii.gz`` and ``labels/<id>.nii.gz``.
"""

from __future__ import annotations

import atexit
import gzip
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ddmr.errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Subject:
    """One head of the bundled cohort.

    Attributes:
        id: subject id (file stem in images/ and labels/).
        image: float32 (96, 96, 96) T1 intensities in [0, 1] (0 outside the brain).
        labels: uint8 (96, 96, 96), values as in :func:`cohort_label_names`.
        affine: 4x4 voxel -> world (mm, RAS).
        spacing: voxel size in mm along the three array axes.
        metadata: the subject's record in cohort.json (source, licence, processing).
    """

    id: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)


def _root(name: str = "brain") -> Traversable:
    return resources.files("ddmr.data") / "sample" / name


@cache
def cohort_metadata(name: str = "brain") -> dict[str, Any]:
    """The parsed ``sample/<name>/cohort.json`` (label names, subjects, sources,
    processing) of the bundled ``brain`` cohort or the ``ct`` abdominal CTs."""
    meta = _root(name) / "cohort.json"
    if not meta.is_file():
        raise InputError(f"{meta}: the bundled {name} data is missing (broken installation?)")
    return json.loads(meta.read_text(encoding="utf-8"))


def cohort_label_names(name: str = "brain") -> dict[int, str]:
    """Label value -> name, the same for every subject (0 is background)."""
    return {int(k): v for k, v in cohort_metadata(name)["labels"].items()}


def cohort_ids(name: str = "brain") -> list[str]:
    """Subject ids in the order of cohort.json."""
    return [s["id"] for s in cohort_metadata(name)["subjects"]]


def sample_cohort_dir() -> Path:
    """Filesystem folder of the brain cohort with images/ and labels/ (the ``folder``
    layout of ddmr prepare), cohort.json and split.json (see :func:`bundled_dir`)."""
    return bundled_dir("brain")


def sample_ct_dir() -> Path:
    """Filesystem folder of the bundled abdominal CTs (``sample/ct``: two real CTs from
    TotalSegmentator's test files in Hounsfield units, with its automatic 117-class
    labels, 5 = liver; ``ct/cohort.json`` names the classes present), in the same layout
    as :func:`sample_cohort_dir`; ``scripts/build_sample_ct.py`` rebuilds it."""
    return bundled_dir("ct")


def bundled_dir(name: str) -> Path:
    """The folder ``sample/<name>`` on the filesystem: the package folder itself for a
    normal (unzipped) installation, else a copy made once into a temporary folder that is
    removed when the process exits."""
    root = _root(name)
    if isinstance(root, Path):
        return root
    return _extracted(name)


@cache
def _extracted(name: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix=f"ddmr-sample-{name}-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    root = _root(name)
    for item in root.iterdir():
        if item.is_dir():
            (dest / item.name).mkdir()
            for child in item.iterdir():
                (dest / item.name / child.name).write_bytes(child.read_bytes())
        else:
            (dest / item.name).write_bytes(item.read_bytes())
    log.debug("sample %s copied to %s", name, dest)
    return dest


def _read(item: Traversable) -> nib.Nifti1Image:
    data = item.read_bytes()
    if item.name.endswith(".gz"):
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def load_subject(sid: str) -> Subject:
    """Load one subject by id (see :func:`cohort_ids`)."""
    records = {s["id"]: s for s in cohort_metadata()["subjects"]}
    if sid not in records:
        raise InputError(f"sample cohort: no subject {sid!r}; known: {', '.join(records)}")
    rec = records[sid]
    img = _read(_root() / rec["image"])
    lab = _read(_root() / rec["labels"])
    image = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    image = np.clip(image, 0.0, 1.0)
    labels = np.asarray(lab.dataobj, dtype=np.uint8)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Subject(id=sid, image=image, labels=labels, affine=img.affine.copy(),
                   spacing=spacing, metadata=rec)  # type: ignore[arg-type]


def sample_cohort(ids: Sequence[str] | None = None) -> list[Subject]:
    """The bundled cohort as a list of :class:`Subject` (all, or the given ids in order)."""
    return [load_subject(s) for s in (cohort_ids() if ids is None else ids)]


def cohort_split(seed: int | None = None) -> dict[str, list[str]]:
    """Subject-level train/val/test split of the cohort (whole subjects, never pieces).

    With ``seed=None`` the split recorded in cohort.json: the templates and one individual
    train, one individual validates, two individuals are held out for testing. With an int
    seed the individuals are shuffled (seeded) and dealt two to test, one to val and the
    rest to train; templates always train, so every test head is a real individual.
    """
    subs = cohort_metadata()["subjects"]
    if seed is None:
        out: dict[str, list[str]] = {k: [] for k in SPLITS}
        for s in subs:
            out[s["split"]].append(s["id"])
        return out
    individuals = [s["id"] for s in subs if s["kind"] == "individual"]
    order = np.random.default_rng(seed).permutation(len(individuals))
    shuffled = [individuals[i] for i in order]
    templates = [s["id"] for s in subs if s["kind"] != "individual"]
    return {
        "train": sorted(templates + shuffled[3:]),
        "val": sorted(shuffled[2:3]),
        "test": sorted(shuffled[:2]),
    }


def copy_sample_cohort(dest: str | Path) -> Path:
    """Copy images/, labels/ and cohort.json into ``dest`` (created); returns ``dest``."""
    src, dest = sample_cohort_dir(), Path(dest)
    for sub in ("images", "labels"):
        shutil.copytree(src / sub, dest / sub, dirs_exist_ok=True)
    shutil.copy2(src / "cohort.json", dest / "cohort.json")
    return dest
