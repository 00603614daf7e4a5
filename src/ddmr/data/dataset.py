"""Reading a prepared dataset (``ddmr prepare`` output): a torch ``Dataset`` per split,
and helpers to map prepared arrays back to the native image grid."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ddmr.data.split import SPLITS
from ddmr.errors import InputError
from ddmr.spatial.grid import Geometry
from ddmr.spatial.resample import resample_to


def dataset_file(path: str | Path) -> Path:
    """The ``dataset.h5`` of a prepared dataset (its folder, or the file itself), checked
    to be a readable HDF5 file that ``ddmr prepare`` wrote."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such prepared dataset (run ddmr prepare)")
    h5 = path / "dataset.h5" if path.is_dir() else path
    if not h5.is_file():
        raise InputError(f"{path}: not a prepared dataset (no dataset.h5; run ddmr prepare)")
    if h5.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"{path}: not a prepared dataset; give the folder that ddmr prepare "
                         "wrote (or its dataset.h5)")
    check_prepared_file(h5)
    return h5


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_prepared_file(h5_path: Path) -> None:
    """Raise :class:`InputError` unless ``h5_path`` opens as HDF5 and carries the format
    attribute that ``ddmr prepare`` writes."""
    import h5py

    from ddmr.prepare.dataset import FORMAT

    try:
        with h5py.File(h5_path, "r") as h5:
            found = h5.attrs.get("format")
    except Exception as error:  # h5py raises OSError, and others for damaged metadata
        raise InputError(f"{h5_path}: cannot read the prepared dataset (truncated or corrupt?): "
                         f"{_first_line(error)}") from None
    if isinstance(found, bytes):
        found = found.decode(errors="replace")
    if found != FORMAT:
        raise InputError(f"{h5_path}: not a prepared dataset written by ddmr prepare (no "
                         f"format attribute {FORMAT!r}; run ddmr prepare)")


#: what every subject group of a prepared dataset holds (checked by :func:`read_split`)
SUBJECT_ATTRIBUTES = ("affine", "spacing", "native_affine", "native_shape")


def read_split(path: str | Path) -> dict[str, list[str]]:
    """The ``split.json`` beside a prepared ``dataset.h5``: split name -> ids, checked
    against the subjects the HDF5 file holds."""
    import h5py

    h5_path = dataset_file(path)
    split_file = h5_path.parent / "split.json"
    if not split_file.is_file():
        raise InputError(f"{split_file}: no such file (a prepared dataset needs its split; "
                         "run ddmr prepare)")
    try:
        data = json.loads(split_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{split_file}: cannot read split: {_first_line(error)}") from None
    if not isinstance(data, dict) or any(not isinstance(data.get(name, []), list)
                                         for name in SPLITS):
        raise InputError(f"{split_file}: expected {{\"train\": [ids], \"val\": [ids], "
                         "\"test\": [ids]}")
    split = {name: [str(i) for i in data.get(name, [])] for name in SPLITS}
    try:
        with h5py.File(h5_path, "r") as h5:
            ids = [i for name in SPLITS for i in split[name]]
            unknown = [i for i in ids if i not in h5]
            if unknown:
                raise InputError(f"{split_file}: names subjects that are not in the dataset "
                                 f"{h5_path.name}: {', '.join(unknown[:3])}")
            for ident in ids:
                group = h5[ident]
                missing = [k for k in SUBJECT_ATTRIBUTES if k not in group.attrs]
                if "image" not in group or group["image"].ndim != 3 or missing:
                    raise InputError(f"{h5_path}: subject {ident!r} is incomplete (needs a 3D "
                                     f"image and {', '.join(SUBJECT_ATTRIBUTES)}); prepare "
                                     "the dataset again")
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"{h5_path}: cannot read the prepared dataset (truncated or corrupt?): "
                         f"{_first_line(error)}") from None
    return split


def subject_geometries(path: str | Path, ident: str) -> tuple[Geometry, Geometry]:
    """``(prepared, native)`` geometries of subject ``ident`` of a prepared dataset."""
    import h5py

    with h5py.File(dataset_file(path), "r") as h5:
        if ident not in h5:
            raise InputError(f"{path}: no subject {ident!r} in the prepared dataset")
        attrs = h5[ident].attrs
        prepared_shape = h5[ident]["image"].shape
        return (Geometry(np.asarray(attrs["affine"]), prepared_shape),
                Geometry(np.asarray(attrs["native_affine"]), tuple(attrs["native_shape"])))


def to_native(array: np.ndarray, prepared: Geometry, native: Geometry, order: int = 0,
              cval: float = 0.0) -> np.ndarray:
    """Map an array (D, H, W) on the prepared grid back onto the native grid (I, J, K).

    ``order=0`` for label maps, 1 or 3 for images; outside the prepared region is ``cval``.
    """
    return resample_to(array, prepared, native, order=order, cval=cval)


class PreparedDataset(Dataset):
    """Items of one split of a prepared dataset.

    Each item is ``{"image": (1, D, H, W) float32, "labels": (1, D, H, W) uint8 (only when
    the subject has labels), "spacing": (3,) float32 mm, "id": str}``. The HDF5 file is
    opened lazily, once per worker process; ``split=None`` gives every subject.
    """

    def __init__(self, path: str | Path, split: str | None = "train",
                 require_labels: bool = False) -> None:
        import h5py

        self.file = dataset_file(path)
        if split is not None and split not in SPLITS:
            raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        with h5py.File(self.file, "r") as h5:
            available = list(h5.keys())
            ids = available if split is None else read_split(self.file)[split]
            missing = [i for i in ids if i not in h5]
            if missing:
                raise InputError(f"{self.file}: split {split} names unknown ids {missing[:3]}")
            self.spacing = {i: torch.tensor(np.asarray(h5[i].attrs["spacing"]),
                                            dtype=torch.float32) for i in ids}
            self.has_labels = {i: "labels" in h5[i] for i in ids}
        if require_labels:
            unlabelled = [i for i in ids if not self.has_labels[i]]
            if unlabelled:
                raise InputError(f"{self.file}: subjects without labels: {unlabelled[:3]}")
        self.ids = list(ids)
        self.split = split
        self._h5: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _handle(self):
        if self._h5 is None or self._pid != os.getpid():
            import h5py

            self._h5 = h5py.File(self.file, "r")
            self._pid = os.getpid()
        return self._h5

    def __getitem__(self, index: int) -> dict[str, Any]:
        ident = self.ids[index]
        try:
            group = self._handle()[ident]
            image = group["image"][()]
            labels = group["labels"][()] if self.has_labels[ident] else None
        except (OSError, KeyError, ValueError) as error:  # a damaged chunk, say
            raise InputError(f"{self.file}: cannot read subject {ident!r} (truncated or "
                             f"corrupt?): {_first_line(error)}") from None
        item: dict[str, Any] = {
            "image": torch.from_numpy(image.astype(np.float32, copy=False))[None],
            "spacing": self.spacing[ident].clone(),
            "id": ident,
        }
        if labels is not None:
            item["labels"] = torch.from_numpy(labels)[None]
        return item

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None  # never pickle an open file into a worker
        state["_pid"] = None
        return state
