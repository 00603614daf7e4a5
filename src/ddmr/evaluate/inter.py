"""The inter-subject protocol: ordered pairs of different subjects, each on its own grid
with its own header, scored in world space (issue 21).

``ddmr pairs --pairing inter-subject`` stores every ordered pair of distinct subjects of a
split (6 subjects: 30 pairs; the bundled test split: 2). Each subject is stored once, as
read from its source files (its native grid; the prepared arrays where the source is
gone), and a pair names its fixed and moving subject. There is no ground-truth field.

Every method registers the pair through world coordinates and returns a displacement on
the fixed grid (RAS mm, the fixed point ``p`` shows the moving image at ``p + d``); the
moving image and labels are warped through it (labels label-exactly) and scored by
:func:`ddmr.metrics.pair_metrics`' label and image definitions: DSC, HD95,
centroid TRE, NCC, SSIM, folding and SDlogJ, plus landmark TRE (mm) when landmark files
are given (:func:`landmark_tre`).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.errors import InputError
from ddmr.spatial.grid import Geometry

MODE = "inter-subject"


@dataclass
class InterPair:
    """One stored inter-subject pair: the fixed and moving subjects' images (float32) and
    label maps (uint8 or None) on their own grids."""

    name: str
    fixed_subject: str
    moving_subject: str
    fixed: np.ndarray
    fixed_geometry: Geometry
    moving: np.ndarray
    moving_geometry: Geometry
    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None

    @property
    def subject(self) -> str:
        return f"{self.fixed_subject}<-{self.moving_subject}"


def _native(group: Any, data: Path, ident: str) -> tuple[np.ndarray, np.ndarray | None,
                                                          Geometry, str]:
    """A subject as read from its source files, or its prepared arrays when they are gone:
    (image, labels, geometry, where it came from)."""
    from ddmr.io.images import load_image, load_labels

    def located(text: str) -> Path | None:
        """A recorded source path: as it is (absolute, or relative to where ddmr prepare
        ran), or relative to the dataset folder."""
        if not text:
            return None
        return next((p for p in (Path(text), data / text) if p.is_file()), None)

    source = located(str(group.attrs.get("source_image", "")))
    labels_source = located(str(group.attrs.get("source_labels", "") or ""))
    if source is not None:
        image, geometry = load_image(source)
        labels = load_labels(labels_source)[0] if labels_source is not None else None
        return image, labels, geometry, str(source.resolve())
    image = group["image"][()]
    labels = group["labels"][()] if "labels" in group else None
    return image, labels, Geometry(np.asarray(group.attrs["affine"]), image.shape), \
        f"prepared {ident}"


def write_inter_pairs(folder: Path, data: str | Path, split: str, progress: bool
                      ) -> dict[str, Any]:
    """Store every ordered pair of distinct subjects of ``split`` (``all``: every subject
    of the dataset) into ``folder``."""
    import h5py
    from tqdm.auto import tqdm

    from ddmr.data.dataset import PreparedDataset, dataset_file
    from ddmr.evaluate.pair_files import ARRAYS, FORMAT, FORMAT_VERSION, INDEX

    data = Path(data)
    dataset = PreparedDataset(data, split=None if split == "all" else split)
    ids = list(dataset.ids)
    dataset.close()
    if len(ids) < 2:
        raise InputError(f"{data}: split {split!r} has {len(ids)} subject(s); inter-subject "
                         "pairs need at least two")
    index: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "mode": MODE,
                             "dataset": str(data.resolve()), "split": split, "pairs": [],
                             "subjects": {}}
    with h5py.File(dataset_file(data), "r") as source, h5py.File(folder / ARRAYS, "w") as h5:
        subjects = h5.create_group("subjects")
        for ident in tqdm(ids, desc="subjects", disable=not progress):
            image, labels, geometry, origin = _native(source[ident], data, ident)
            group = subjects.create_group(ident)
            group.create_dataset("image", data=image.astype(np.float32), compression="gzip",
                                 compression_opts=1)
            if labels is not None:
                group.create_dataset("labels", data=labels.astype(np.uint8),
                                     compression="gzip", compression_opts=1)
            group.attrs["affine"] = geometry.affine
            index["subjects"][ident] = {"source": origin, "shape": list(geometry.shape),
                                        "spacing": list(geometry.spacing),
                                        "labels": labels is not None}
        for number, (fixed, moving) in enumerate(itertools.permutations(ids, 2)):
            index["pairs"].append({"name": f"{number:04d}", "fixed": fixed, "moving": moving,
                                   "subject": f"{fixed}<-{moving}"})
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


def read_inter_pair(h5: Any, entry: dict[str, Any]) -> InterPair:
    """One pair of an inter-subject pairs file (open ``h5``), by its index ``entry``."""
    def side(ident: str):
        group = h5["subjects"][ident]
        image = group["image"][()]
        labels = group["labels"][()] if "labels" in group else None
        return image, Geometry(np.asarray(group.attrs["affine"]), image.shape), labels

    fixed, fixed_geometry, fixed_labels = side(entry["fixed"])
    moving, moving_geometry, moving_labels = side(entry["moving"])
    return InterPair(entry["name"], entry["fixed"], entry["moving"], fixed, fixed_geometry,
                     moving, moving_geometry, fixed_labels, moving_labels)


# -- landmarks ------------------------------------------------------------------------------


def read_landmarks(folder: str | Path | None, subject: str) -> dict[str, np.ndarray] | None:
    """A subject's landmarks ``FOLDER/<subject>.csv`` (an ``id`` column and coordinates as
    ``ddmr apply --points`` reads them): {id: RAS point (3,)}; None without a file."""
    from ddmr.registration.apply import read_points

    if folder is None:
        return None
    path = Path(folder) / f"{subject}.csv"
    if not path.is_file():
        return None
    table = read_points(path)
    lower = [name.lower() for name in table.header]
    if "id" not in lower:
        raise InputError(f"{path}: landmark files need an id column (the same ids name the "
                         "same landmarks in every subject)")
    column = lower.index("id")
    return {row[column].strip(): point for row, point in
            zip(table.rows, table.points_ras, strict=True)}


def landmark_tre(fixed_points: dict[str, np.ndarray], moving_points: dict[str, np.ndarray],
                 displacement_mm: np.ndarray, geometry: Geometry) -> float:
    """Mean distance (mm) between each moving landmark and where the registration puts the
    fixed landmark of the same id (``p + d(p)``, the fixed-to-moving map); NaN when no id
    is shared."""
    from ddmr.spatial.displacement import Displacement

    shared = sorted(set(fixed_points) & set(moving_points))
    if not shared:
        return float("nan")
    points = np.stack([fixed_points[k] for k in shared])
    mapped = Displacement(displacement_mm, geometry, "zero").moved(points)
    targets = np.stack([moving_points[k] for k in shared])
    return float(np.linalg.norm(mapped - targets, axis=1).mean())


# -- scoring --------------------------------------------------------------------------------


def score_inter(pair: InterPair, method: str, displacement_mm: np.ndarray, seconds: float,
                landmarks: str | Path | None = None) -> dict[str, Any]:
    """One row of results for a method's world displacement (3, *fixed shape) on a pair;
    ``seconds`` plus the time of warping the moving image and labels through it (what
    :func:`ddmr.evaluate.runner.score_pair` counts on same-subject pairs)."""
    from ddmr.baselines.peers import warp
    from ddmr.metrics import pair_metrics
    from ddmr.spatial.field import mm_to_voxels

    start = time.perf_counter()
    warped = warp((pair.moving, pair.moving_geometry), displacement_mm, pair.fixed_geometry)
    warped_labels = None
    if pair.moving_labels is not None:
        warped_labels = warp((pair.moving_labels, pair.moving_geometry), displacement_mm,
                             pair.fixed_geometry, labels=True)
    seconds += time.perf_counter() - start

    def scaled(image: np.ndarray) -> np.ndarray:
        low, high = float(np.min(pair.fixed)), float(np.percentile(pair.fixed, 99.5))
        return np.clip((image - low) / max(high - low, 1e-12), 0, 1).astype(np.float32)

    values = pair_metrics(scaled(pair.fixed), scaled(warped), pair.fixed_geometry.spacing,
                          mm_to_voxels(displacement_mm, pair.fixed_geometry),
                          pair.fixed_labels, warped_labels, moving_labels=pair.moving_labels)
    fixed_points = read_landmarks(landmarks, pair.fixed_subject)
    moving_points = read_landmarks(landmarks, pair.moving_subject)
    values["landmark_tre"] = (landmark_tre(fixed_points, moving_points, displacement_mm,
                                           pair.fixed_geometry)
                              if fixed_points is not None and moving_points is not None
                              else float("nan"))
    return {"pair": pair.name, "subject": pair.subject, "method": method,
            "seconds": seconds, **values}


def register_inter(pair: InterPair, model: Any, engine: Any) -> tuple[np.ndarray, float]:
    """``ddmr.register`` on the pair in world space (``model``: a loaded model or False;
    ``engine``: its settings or False) -> (displacement mm, seconds without metrics)."""
    from ddmr.registration.pipeline import register

    started = time.perf_counter()
    result = register((pair.fixed, pair.fixed_geometry), (pair.moving, pair.moving_geometry),
                      model=model, engine=engine)
    runtime = result.summary["runtime_s"]
    seconds = time.perf_counter() - started - runtime["metrics"] - runtime["qc"]
    return result.displacement_mm, seconds


def baseline_inter(pair: InterPair, name: str, engine_settings: Any = None,
                   ants_settings: Any = None) -> tuple[np.ndarray, float]:
    """A baseline on an inter-subject pair -> (displacement mm, seconds): ``none`` (the
    headers as they are), ``affine`` (DDMR's world-space affine stage), ``engine`` (that
    stage and the engine), ``syn`` / ``syncc``: with ``ants_settings`` (an
    :class:`ddmr.baselines.ants.AntsSettings`), DDMR's two ANTs stages with those
    settings (:func:`ddmr.baselines.ants.register_ants_world`, as on same-subject pairs);
    without, antspyx's one-call SyN / SyNCC at its own defaults."""
    from ddmr.baselines import peers
    from ddmr.baselines.ants import register_ants_world

    fixed, moving = (pair.fixed, pair.fixed_geometry), (pair.moving, pair.moving_geometry)
    if name == "none":
        return np.zeros((3, *pair.fixed_geometry.shape), np.float32), 0.0
    if name in ("affine", "engine"):
        return register_inter(pair, False, engine_settings if name == "engine" else False)
    if name in ("syn", "syncc") and ants_settings is not None:
        return register_ants_world(fixed, moving, name, ants_settings)
    if name in ("syn", "syncc"):
        result = peers.syn(fixed, moving, type_of_transform="SyN" if name == "syn"
                           else "SyNCC")
        return result.displacement_mm, result.seconds
    raise InputError(f"unknown baseline {name!r} for inter-subject pairs")
