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
from ddmr.io import Geometry, resample_to


def _dataset_file(path: str | Path) -> Path:
    path = Path(path)
    h5 = path / "dataset.h5" if path.is_dir() else path
    if not h5.is_file():
        raise InputError(f"{path}: not a prepared dataset (no dataset.h5; run ddmr prepare)")
    return h5


def read_split(path: str | Path) -> dict[str, list[str]]:
    """The ``split.json`` beside a prepared ``dataset.h5``: split name -> ids."""
    split_file = _dataset_file(path).parent / "split.json"
    try:
        data = json.loads(split_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{split_file}: cannot read split: {error}") from None
    return {name: list(data.get(name, [])) for name in SPLITS}


def subject_geometries(path: str | Path, ident: str) -> tuple[Geometry, Geometry]:
    """``(prepared, native)`` geometries of subject ``ident`` of a prepared dataset."""
    import h5py

    with h5py.File(_dataset_file(path), "r") as h5:
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

        self.file = _dataset_file(path)
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
        group = self._handle()[ident]
        item: dict[str, Any] = {
            "image": torch.from_numpy(group["image"][()].astype(np.float32, copy=False))[None],
            "spacing": self.spacing[ident].clone(),
            "id": ident,
        }
        if self.has_labels[ident]:
            item["labels"] = torch.from_numpy(group["labels"][()])[None]
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
