"""Stored test pairs: made once with the augmentation layer from held-out subjects,
written to disk, and read back by every method so that all are scored on the same pairs.

Layout of a pairs folder::

    PAIRS/pairs.json   index: format, source dataset, split, seed, augmentation config,
                       and per pair its name, subject, shape and spacing
    PAIRS/pairs.h5     one group per pair (``"0000"``, ...) holding
                       fixed, moving           (D, H, W) float32 in [0, 1]
                       fixed_labels, moving_labels  (D, H, W) uint8 (when the subject has labels)
                       displacement            (3, D, H, W) float32, ground truth in voxels of
                                               the grid, (D, H, W) channel order, pull-back:
                                               ``warp_image(moving, u) ~ fixed``
                       attrs: subject, spacing (3,) mm, affine (4, 4) RAS of the prepared
                       grid, native_affine and native_shape (the subject's original grid),
                       parameters (JSON of the drawn augmentation parameters)

The same dataset, split, count, seed and configuration give bit-identical arrays on CPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.deprecated import renamed_keywords
from ddmr.errors import ConfigError, InputError
from ddmr.evaluate.pair_files import ARRAYS, FORMAT, FORMAT_VERSION, INDEX
from ddmr.io.files import atomic_directory, check_free_space, check_output_folder

logger = logging.getLogger(__name__)


@dataclass
class StoredPair:
    """One stored pair (arrays as described in the module docstring)."""

    name: str
    subject: str
    fixed: np.ndarray
    moving: np.ndarray
    displacement: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    parameters: dict[str, Any]
    fixed_labels: np.ndarray | None = None
    moving_labels: np.ndarray | None = None


def _subject_order(n_subjects: int, n: int, seed: int) -> list[int]:
    """Which subject each of the ``n`` pairs comes from: a seeded permutation, cycled."""
    import torch

    generator = torch.Generator().manual_seed(int(seed) + 1)
    order = torch.randperm(n_subjects, generator=generator).tolist()
    return [order[i % n_subjects] for i in range(n)]


#: free space kept beyond a pair's arrays before it is written (HDF5 metadata, the index)
SPACE_RESERVE = 1 << 20


def pair_bytes(shape: Sequence[int]) -> int:
    """Bytes of one stored pair of ``shape`` (D, H, W) voxels: two float32 images, a
    3-channel float32 field and two uint8 label maps."""
    return int(np.prod([int(n) for n in shape])) * (2 * 4 + 3 * 4 + 2)


def _write_pairs(folder: Path, data: str | Path, split: str, n: int, seed: int,
                 config: Any, progress: bool, output: Path) -> dict[str, Any]:
    """Write the pairs into ``folder`` (the temporary folder of ``output``)."""
    import h5py
    import torch
    from tqdm.auto import tqdm

    from ddmr.augment import AugmentationLayer
    from ddmr.augment.files import check_tps_memory
    from ddmr.data.dataset import PreparedDataset, subject_geometries

    dataset = PreparedDataset(data, split=split)
    if len(dataset) == 0:
        raise InputError(f"{data}: split {split!r} has no subjects")
    layer = AugmentationLayer(config, seed=seed)
    index: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dataset": str(Path(data).resolve()),
        "split": split, "n": n, "seed": seed, "augmentation": config.to_dict(), "pairs": [],
    }
    try:
        with h5py.File(folder / ARRAYS, "w") as h5:
            for i, subject in enumerate(tqdm(_subject_order(len(dataset), n, seed),
                                             desc="pairs", disable=not progress)):
                item = dataset[subject]
                labels = item.get("labels")
                spacing = tuple(float(s) for s in item["spacing"])
                check_tps_memory(item["image"].shape[1:], spacing, config)
                with torch.no_grad():
                    pair = layer(item["image"][None], None if labels is None else labels[None],
                                 spacing)
                prepared, native = subject_geometries(data, item["id"])
                name = f"{i:04d}"
                # HDF5 cannot recover from a full disk: stop before a pair that may not fit
                check_free_space(output, pair_bytes(item["image"].shape[1:]) + SPACE_RESERVE,
                                 f"pair {name}")
                group = h5.create_group(name)
                group.create_dataset("fixed", data=pair.fixed[0, 0].numpy().astype(np.float32))
                group.create_dataset("moving", data=pair.moving[0, 0].numpy().astype(np.float32))
                group.create_dataset("displacement",
                                     data=pair.displacement[0].numpy().astype(np.float32))
                if labels is not None:
                    group.create_dataset("fixed_labels",
                                         data=pair.fixed_labels[0, 0].numpy().astype(np.uint8))
                    group.create_dataset("moving_labels",
                                         data=pair.moving_labels[0, 0].numpy().astype(np.uint8))
                group.attrs["subject"] = item["id"]
                group.attrs["spacing"] = np.asarray(spacing)
                group.attrs["affine"] = prepared.affine
                group.attrs["native_affine"] = native.affine
                group.attrs["native_shape"] = np.asarray(native.shape)
                group.attrs["parameters"] = json.dumps(pair.parameters.to_dict())
                index["pairs"].append({"name": name, "subject": item["id"],
                                       "shape": list(pair.fixed.shape[2:]),
                                       "spacing": list(spacing),
                                       "labels": labels is not None})
                h5.flush()
    finally:
        dataset.close()
    (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return index


@renamed_keywords(mode="pairing")
def make_pairs(data: str | Path, output: str | Path, n: int, seed: int, split: str = "test",
               config: Any = None, overwrite: bool = False, progress: bool = True,
               pairing: str = "same-subject") -> dict[str, Any]:
    """Make ``n`` test pairs from the subjects of ``split`` of a prepared dataset and store
    them in the folder ``output`` (written under a temporary name, then renamed).

    Subjects are taken in a seeded order, cycled when ``n`` exceeds their number; each
    pair's moving image comes from the :class:`ddmr.augment.AugmentationLayer` with
    ``config`` (default :class:`ddmr.augment.AugmentationConfig`) seeded by ``seed``.
    Refuses an existing ``output`` unless ``overwrite``. Returns the index (pairs.json).

    ``pairing="inter-subject"`` stores instead every ordered pair of distinct subjects of
    the split on their own grids (:mod:`ddmr.evaluate.inter`; ``n``, ``seed`` and
    ``config`` are not used). (``pairing`` was ``mode`` before; ``mode=`` still works for
    one release, with a :class:`DeprecationWarning`.)
    """
    from ddmr.augment import AugmentationConfig
    from ddmr.evaluate.inter import MODE, write_inter_pairs

    if pairing not in ("same-subject", MODE):
        raise ConfigError(f"--pairing {pairing}: choose same-subject or {MODE}")
    if pairing == MODE:
        output = check_output_folder(output, overwrite)
        with atomic_directory(output, overwrite) as temporary:
            index = write_inter_pairs(temporary, data, split, progress)
        logger.info("wrote %d inter-subject pairs to %s", len(index["pairs"]), output)
        return index
    if n < 1:
        raise ConfigError(f"the number of pairs must be at least 1, got {n}")
    output = check_output_folder(output, overwrite)
    if not output.absolute().parent.is_dir():
        raise InputError(f"{output}: folder {output.parent} does not exist")
    config = config or AugmentationConfig()
    with atomic_directory(output, overwrite) as temporary:
        index = _write_pairs(temporary, data, split, n, seed, config, progress, output)
    logger.info("wrote %d pairs to %s", n, output)
    return index


def read_index(path: str | Path) -> dict[str, Any]:
    """The ``pairs.json`` index of a pairs folder (validated)."""
    folder = Path(path)
    index_file = folder / INDEX
    if not folder.exists():
        raise InputError(f"{folder}: no such folder (make stored pairs with ddmr pairs)")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; expected a pairs folder made by ddmr pairs")
    if not index_file.is_file() or not (folder / ARRAYS).is_file():
        raise InputError(f"{folder}: not a pairs folder (needs {INDEX} and {ARRAYS}; "
                         "run ddmr pairs)")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{index_file}: cannot read: {error}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InputError(f"{index_file}: not a DDMR pairs index")
    pairs = index.get("pairs")
    if (not isinstance(pairs, list)
            or not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in pairs)):
        raise InputError(f"{index_file}: the index has no list of named pairs")
    return index


class PairSet:
    """The stored pairs of a folder: ``len(pairs)``, ``pairs[i] -> StoredPair``, iteration."""

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        self.index = read_index(self.path)
        self.names = [p["name"] for p in self.index["pairs"]]
        arrays = self.path / ARRAYS
        try:
            with h5py.File(arrays, "r") as h5:
                if self.index.get("mode", "same-subject") == "same-subject":
                    missing = [name for name in self.names if name not in h5]
                else:
                    wanted = {p[k] for p in self.index["pairs"] for k in ("fixed", "moving")}
                    missing = sorted(wanted - set(h5.get("subjects", {})))
        except Exception as error:  # h5py raises OSError, and others for damaged metadata
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise InputError(f"{arrays}: cannot read (truncated or corrupt?): "
                             f"{detail or type(error).__name__}") from None
        if missing:
            raise InputError(f"{arrays}: pairs listed in {INDEX} are missing: "
                             f"{', '.join(missing[:3])}")

    @property
    def mode(self) -> str:
        """``same-subject`` (synthetic pairs with a ground truth) or ``inter-subject``."""
        return self.index.get("mode", "same-subject")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        """The i-th pair: a :class:`StoredPair`, or an
        :class:`ddmr.evaluate.inter.InterPair` in inter-subject mode."""
        import h5py

        name = self.names[i]
        try:
            with h5py.File(self.path / ARRAYS, "r") as h5:
                if self.mode != "same-subject":
                    from ddmr.evaluate.inter import read_inter_pair

                    return read_inter_pair(h5, self.index["pairs"][i])
                group = h5[name]

                def optional(key: str) -> np.ndarray | None:
                    return group[key][()] if key in group else None

                return StoredPair(
                    name=name, subject=str(group.attrs["subject"]),
                    fixed=group["fixed"][()], moving=group["moving"][()],
                    displacement=group["displacement"][()],
                    spacing=tuple(float(s) for s in group.attrs["spacing"]),
                    affine=np.asarray(group.attrs["affine"]),
                    parameters=json.loads(group.attrs["parameters"]),
                    fixed_labels=optional("fixed_labels"), moving_labels=optional("moving_labels"))
        except (OSError, KeyError) as error:
            raise InputError(f"{self.path / ARRAYS}: cannot read pair {name}: {error}") from None

    def __iter__(self) -> Iterator[StoredPair]:
        for i in range(len(self)):
            yield self[i]
