"""Dataset layouts: find each subject's image and label files in a user's folder.

Every adapter returns a list of :class:`Source` (one per image), sorted by id. Layouts:

``folder``
    ``INPUT/images/<id>.nii.gz`` with optional ``INPUT/labels/<id>.nii.gz`` (same name).
``csv``
    ``INPUT`` is a CSV manifest with columns ``id,image[,labels][,subject]``; relative
    paths are relative to the manifest's folder. ``subject`` groups several images of
    one person (they always land in the same split); it defaults to ``id``.
``ixi``
    IXI naming, ``IXI002-Guys-0828-T1.nii.gz`` (T1 only, other modalities ignored);
    the id is ``IXI002``. Labels come from ``labels_dir`` (``<id>.nii.gz`` or the image's
    own file name) or from atlas propagation.
``msd``
    Medical Segmentation Decathlon: ``INPUT/dataset.json`` whose ``"training"`` list holds
    ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``.
``learn2reg``
    Learn2Reg: ``INPUT/<Task>_dataset.json`` with ``"training"`` entries, files
    ``imagesTr/<Task>_0001_0000.nii.gz`` (the ``_0000`` suffix numbers the scans of one
    subject, who is ``<Task>_0001``), labels ``labelsTr/`` with the same names.
``auto``
    picks one of the above from what ``INPUT`` contains.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ddmr.errors import InputError
from ddmr.io.files import file_extension, read_csv_records, strip_extension
from ddmr.io.images import READ_EXTENSIONS

LAYOUTS = ("auto", "folder", "csv", "ixi", "msd", "learn2reg")

IXI_PATTERN = re.compile(r"^(IXI\d{3})-([A-Za-z]+)-(\d+)-(T1|T2|PD|MRA|DTI)\.nii(\.gz)?$")
LEARN2REG_SCAN = re.compile(r"^(.*)_(\d{4})$")


@dataclass(frozen=True)
class Source:
    """One image to prepare: ``id`` (unique), ``subject`` (split unit), file paths."""

    id: str
    subject: str
    image: Path
    labels: Path | None = None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and file_extension(p) in READ_EXTENSIONS)


def _check_unique(sources: list[Source], where: Path) -> list[Source]:
    seen: dict[str, Path] = {}
    for source in sources:
        if source.id in seen:
            raise InputError(
                f"{source.image}: id {source.id!r} also used by {seen[source.id]} in {where}"
            )
        if not source.id or "/" in source.id or source.id in {".", ".."}:
            raise InputError(f"{source.image}: unusable subject id {source.id!r}")
        seen[source.id] = source.image
    if not sources:
        raise InputError(f"{where}: no images found")
    return sorted(sources, key=lambda s: s.id)


def _existing(path: Path, what: str) -> Path:
    if path.is_dir():
        raise InputError(f"{path}: {what} listed in the dataset is a directory, expected a file")
    if not path.is_file():
        raise InputError(f"{path}: {what} listed in the dataset does not exist")
    return path


def folder_layout(root: Path, labels_dir: Path | None = None) -> list[Source]:
    """``root/images/<id>.ext`` and optional ``root/labels/<id>.ext``."""
    images = root / "images"
    if not images.is_dir():
        raise InputError(f"{root}: folder layout needs an images/ sub-folder")
    labels = labels_dir if labels_dir is not None else root / "labels"
    sources = []
    for image in _image_files(images):
        label = labels / image.name
        sources.append(Source(strip_extension(image), strip_extension(image), image,
                              label if label.is_file() else None))
    return _check_unique(sources, images)


def csv_layout(manifest: Path, labels_dir: Path | None = None) -> list[Source]:
    """A CSV manifest with columns ``id,image[,labels][,subject]``."""
    if manifest.is_dir():
        candidates = sorted(manifest.glob("*.csv"))
        if len(candidates) != 1:
            raise InputError(f"{manifest}: expected exactly one .csv manifest in the folder")
        manifest = candidates[0]
    header, rows = read_csv_records(manifest)  # UTF-8, with or without a byte-order mark
    if not rows or not {"id", "image"} <= set(header):
        raise InputError(f"{manifest}: manifest needs a header with columns id,image[,labels]")
    base = manifest.parent
    sources = []
    for number, row in enumerate(rows, start=2):
        if not (row.get("id") or "").strip() or not (row.get("image") or "").strip():
            raise InputError(f"{manifest}: line {number} has an empty id or image")
        image = _existing(base / row["image"].strip(), "image")
        label_text = (row.get("labels") or "").strip()
        labels = _existing(base / label_text, "label file") if label_text else None
        ident = row["id"].strip()
        sources.append(Source(ident, (row.get("subject") or "").strip() or ident, image, labels))
    return _check_unique(sources, manifest)


def ixi_layout(root: Path, labels_dir: Path | None = None) -> list[Source]:
    """IXI T1 files (``IXI<nnn>-<site>-<nnnn>-T1.nii.gz``), found recursively."""
    sources = []
    for image in sorted(root.rglob("IXI*")):
        match = IXI_PATTERN.match(image.name)
        if not match or match.group(4) != "T1" or not image.is_file():
            continue
        ident = match.group(1)
        labels = None
        if labels_dir is not None:
            for name in (f"{ident}.nii.gz", f"{ident}.nii", image.name):
                if (labels_dir / name).is_file():
                    labels = labels_dir / name
                    break
        sources.append(Source(ident, ident, image, labels))
    if not sources:
        raise InputError(f"{root}: no IXI T1 images (IXI<nnn>-<site>-<nnnn>-T1.nii.gz) found")
    return _check_unique(sources, root)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read dataset description: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("training"), list):
        raise InputError(f"{path}: dataset description has no \"training\" list")
    return data


def _training_entries(description: Path) -> list[tuple[Path, Path | None]]:
    entries = []
    base = description.parent
    for entry in _json(description)["training"]:
        if not isinstance(entry, dict) or "image" not in entry:
            raise InputError(f"{description}: a training entry has no \"image\"")
        image = _existing(base / entry["image"], "image")
        label = entry.get("label")
        entries.append((image, _existing(base / label, "label file") if label else None))
    return entries


def msd_layout(root: Path, labels_dir: Path | None = None) -> list[Source]:
    """Medical Segmentation Decathlon: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``."""
    description = root / "dataset.json"
    if not description.is_file():
        raise InputError(f"{root}: MSD layout needs a dataset.json")
    sources = [Source(strip_extension(image), strip_extension(image), image, label)
               for image, label in _training_entries(description)]
    return _check_unique(sources, description)


def learn2reg_layout(root: Path, labels_dir: Path | None = None) -> list[Source]:
    """Learn2Reg: ``<Task>_dataset.json`` + ``imagesTr/<Task>_<nnnn>_<scan>.nii.gz``."""
    descriptions = sorted(root.glob("*_dataset.json"))
    if len(descriptions) != 1:
        raise InputError(
            f"{root}: Learn2Reg layout needs exactly one <Task>_dataset.json, "
            f"found {len(descriptions)}"
        )
    sources = []
    for image, label in _training_entries(descriptions[0]):
        ident = strip_extension(image)
        match = LEARN2REG_SCAN.match(ident)
        sources.append(Source(ident, match.group(1) if match else ident, image, label))
    return _check_unique(sources, descriptions[0])


ADAPTERS: dict[str, Callable[[Path, Path | None], list[Source]]] = {
    "folder": folder_layout,
    "csv": csv_layout,
    "ixi": ixi_layout,
    "msd": msd_layout,
    "learn2reg": learn2reg_layout,
}


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` (see the module docstring)."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise InputError(f"{root}: expected a dataset folder or a .csv manifest")
    if (root / "dataset.json").is_file():
        return "msd"
    if any(root.glob("*_dataset.json")):
        return "learn2reg"
    if (root / "images").is_dir():
        return "folder"
    if any(IXI_PATTERN.match(p.name) for p in root.rglob("IXI*")):
        return "ixi"
    if any(root.glob("*.csv")):
        return "csv"
    raise InputError(
        f"{root}: cannot tell the dataset layout; pass --layout folder|csv|ixi|msd|learn2reg"
    )


def discover(root: str | Path, layout: str = "auto",
             labels_dir: str | Path | None = None) -> list[Source]:
    """The images of the dataset at ``root`` in ``layout``, sorted by id."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if layout not in LAYOUTS:
        raise InputError(f"{root}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout != "csv" and not root.is_dir():
        raise InputError(f"{root}: the {layout} layout expects a folder")
    labels = Path(labels_dir) if labels_dir is not None else None
    if labels is not None and not labels.is_dir():
        raise InputError(f"{labels}: labels folder does not exist")
    return ADAPTERS[layout](root, labels)
