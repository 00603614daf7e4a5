"""``ddmr prepare``: turn a user's dataset into one HDF5 file the trainer reads fast.

Per image: read the image and its labels (a label file, or atlas propagation with ANTs
when ``atlas`` is set and the subject has no label file) and check they share a grid;
relabel with the optional merging map (unlisted labels become background); then the
preparation recipe of :mod:`ddmr.prepare.recipe` (CT window, prepared grid, resampling,
normalisation), which registration follows too.

Output folder (written to a temporary folder beside it, then renamed):

``dataset.h5``
    one group per id with datasets ``image`` (D, H, W) float32 (or float16) and
    ``labels`` (D, H, W) uint8 when the subject has labels, and attributes ``subject``,
    ``affine`` (prepared grid, 4x4, RAS mm), ``spacing`` (3,), ``native_affine``,
    ``native_shape``, ``intensity_range`` (the native values mapped to 0 and 1),
    ``source_image``, ``source_labels``, ``label_source`` (file | atlas | none).
``split.json``
    ``{"train": [ids], "val": [...], "test": [...], "seed": S, "fractions": [...]}``.
``prepare.json``
    the options, the input and the list of subjects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.data.adapters import LAYOUTS, Source, discover
from ddmr.data.label_map import apply_label_map, read_label_map
from ddmr.data.split import check_fractions, read_split_file, split_subjects
from ddmr.errors import ConfigError, InputError
from ddmr.io.files import atomic_directory, check_free_space, check_output_folder
from ddmr.io.images import load_image, load_labels
from ddmr.prepare.recipe import (
    PrepareOptions,
    prepare_intensities,
    prepare_labels,
    prepared_grid,
)
from ddmr.spatial.grid import Geometry, check_same_geometry

logger = logging.getLogger(__name__)

FORMAT = "ddmr-prepared"
FORMAT_VERSION = 1


@dataclass
class Atlas:
    """An atlas image with its labels, for label propagation."""

    image: np.ndarray
    labels: np.ndarray
    geometry: Geometry

    @classmethod
    def load(cls, image_path: str | Path, labels_path: str | Path) -> Atlas:
        image, geometry = load_image(image_path)
        labels, label_geometry = load_labels(labels_path)
        check_same_geometry(geometry, label_geometry, [image_path, labels_path])
        return cls(image, labels, geometry)


@dataclass
class PreparedSubject:
    """One prepared image: arrays on ``geometry`` (the prepared grid) plus provenance."""

    id: str
    subject: str
    image: np.ndarray  # (D, H, W) float32 in [0, 1]
    labels: np.ndarray | None  # (D, H, W) uint8
    geometry: Geometry
    native_geometry: Geometry
    intensity_range: tuple[float, float]
    source: Source
    label_source: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


def _native_labels(source: Source, image: np.ndarray, geometry: Geometry,
                   options: PrepareOptions, atlas: Atlas | None) -> tuple[np.ndarray | None, str]:
    if source.labels is not None:
        labels, label_geometry = load_labels(source.labels)
        check_same_geometry(geometry, label_geometry, [source.image, source.labels])
        return labels, "file"
    if atlas is not None:
        from ddmr.data.atlas import propagate_labels

        labels = propagate_labels(image, geometry, atlas.image, atlas.geometry, atlas.labels,
                                  options.atlas_syn_iterations, options.atlas_affine_iterations)
        return labels, "atlas"
    return None, "none"


def prepare_subject(source: Source, options: PrepareOptions,
                    label_map: dict[int, int] | None = None,
                    atlas: Atlas | None = None) -> PreparedSubject:
    """Run the preparation steps on one image; raises :class:`InputError` naming the
    offending file. ``label_map`` relabels label files; an ``atlas``'s labels must be
    relabelled beforehand."""
    image, native = load_image(source.image)
    labels, label_source = _native_labels(source, image, native, options, atlas)
    if label_source == "file" and label_map is not None:
        labels = apply_label_map(labels, label_map)  # atlas labels arrive already merged
    if options.crop_labels and labels is None:
        raise InputError(f"{source.image}: --crop-label needs labels, and this image has none")
    grid = prepared_grid(native, options, labels)
    if grid is None:
        where = source.labels if source.labels is not None else source.image
        raise InputError(f"{where}: no voxel has label {', '.join(map(str, options.crop_labels))} "
                         "to crop around (empty crop mask)")
    normalised, (lo, hi) = prepare_intensities(image, native, grid, options, str(source.image),
                                               "inside the prepared region")
    prepared_labels = None if labels is None else prepare_labels(labels, native, grid)
    return PreparedSubject(source.id, source.subject, normalised, prepared_labels, grid, native,
                           (float(lo), float(hi)), source, label_source)


def write_subject(h5: Any, subject: PreparedSubject, dtype: str = "float32") -> None:
    """Store one prepared subject as a group of the open ``h5py.File``."""
    group = h5.create_group(subject.id)
    group.create_dataset("image", data=subject.image.astype(dtype), chunks=subject.image.shape,
                         compression="lzf")
    if subject.labels is not None:
        group.create_dataset("labels", data=subject.labels, chunks=subject.labels.shape,
                             compression="lzf")
        group.attrs["label_values"] = np.unique(subject.labels).astype(np.int32)
    group.attrs["subject"] = subject.subject
    group.attrs["affine"] = subject.geometry.affine
    group.attrs["spacing"] = np.asarray(subject.geometry.spacing)
    group.attrs["native_affine"] = subject.native_geometry.affine
    group.attrs["native_shape"] = np.asarray(subject.native_geometry.shape, dtype=np.int64)
    group.attrs["intensity_range"] = np.asarray(subject.intensity_range)
    group.attrs["source_image"] = str(subject.source.image)
    group.attrs["source_labels"] = str(subject.source.labels or "")
    group.attrs["label_source"] = subject.label_source


#: free space kept beyond a subject's arrays before it is written (HDF5 metadata, JSON)
SPACE_RESERVE = 1 << 20


def subject_bytes(options: PrepareOptions, labels: bool = True) -> int:
    """Bytes that one prepared subject may take in ``dataset.h5`` at most (its arrays
    uncompressed, labels included) plus :data:`SPACE_RESERVE`."""
    voxels = int(np.prod([int(n) for n in options.size]))
    return voxels * (np.dtype(options.dtype).itemsize + (1 if labels else 0)) + SPACE_RESERVE


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def check_options(options: PrepareOptions) -> None:
    """Raise :class:`ConfigError` for an impossible option: those about the dataset's
    files (``layout``, ``split``) first, then how an image is made
    (:meth:`PrepareOptions.validate`)."""
    if options.layout not in LAYOUTS:
        raise ConfigError(f"--layout {options.layout}: choose one of {', '.join(LAYOUTS)}")
    check_fractions(options.split)
    options.validate()


def prepare_dataset(input_path: str | Path, outdir: str | Path, options: PrepareOptions,
                    overwrite: bool = False, progress: bool = True,
                    sources: Sequence[Source] | None = None) -> dict[str, Any]:
    """Prepare every image of the dataset at ``input_path`` into ``outdir``.

    Returns the summary also written to ``outdir/prepare.json``. Nothing is left behind
    on failure: the output is built in a temporary folder beside ``outdir`` and renamed.
    """
    import h5py
    from tqdm.auto import tqdm

    check_options(options)
    outdir = check_output_folder(outdir, overwrite, needed_bytes=subject_bytes(options))
    if sources is None:
        sources = discover(input_path, options.layout, options.labels_dir)
    label_map = read_label_map(options.merge_labels) if options.merge_labels else None
    atlas = (Atlas.load(options.atlas, options.atlas_labels)
             if options.atlas and options.atlas_labels else None)
    if label_map is not None and atlas is not None:
        atlas.labels = apply_label_map(atlas.labels, label_map)

    with atomic_directory(outdir, overwrite) as temporary:
        records = []
        with h5py.File(temporary / "dataset.h5", "w") as h5:
            h5.attrs["format"] = FORMAT
            h5.attrs["version"] = FORMAT_VERSION
            for source in tqdm(sources, desc="ddmr prepare", unit="image", disable=not progress):
                prepared = prepare_subject(source, options, label_map, atlas)
                # HDF5 cannot recover from a full disk (it crashes the process when it
                # closes the file): stop before a subject that might not fit
                check_free_space(outdir, subject_bytes(options, prepared.labels is not None),
                                 f"subject {prepared.id} of the prepared dataset")
                write_subject(h5, prepared, options.dtype)
                h5.flush()
                records.append({
                    "id": prepared.id, "subject": prepared.subject,
                    "image": str(source.image),
                    "labels": str(source.labels) if source.labels else None,
                    "label_source": prepared.label_source,
                    "native_shape": list(prepared.native_geometry.shape),
                    "native_spacing": list(prepared.native_geometry.spacing),
                    "spacing": prepared.geometry.spacing[0],
                })
        unlabelled = [r["id"] for r in records if r["label_source"] == "none"]
        if unlabelled and len(unlabelled) < len(records):
            logger.warning("%d of %d images have no labels: %s", len(unlabelled), len(records),
                           ", ".join(unlabelled[:5]) + (" ..." if len(unlabelled) > 5 else ""))
        if options.split_file is not None:
            split = read_split_file(options.split_file, [r["id"] for r in records])
            _write_json(temporary / "split.json",
                        {**split, "split_file": str(Path(options.split_file).resolve())})
        else:
            split = split_subjects({r["id"]: r["subject"] for r in records}, options.split,
                                   options.seed)
            _write_json(temporary / "split.json",
                        {**split, "seed": options.seed, "fractions": list(options.split)})
        from ddmr import __version__

        summary = {"format": FORMAT, "version": FORMAT_VERSION, "ddmr": __version__,
                   "input": str(Path(input_path).resolve()), "options": options.to_dict(),
                   "subjects": records}
        _write_json(temporary / "prepare.json", summary)
    return summary
