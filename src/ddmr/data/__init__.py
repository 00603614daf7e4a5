"""Data: dataset layouts, the bundled sample cohort, CT phantoms, loaders (preparation is
:mod:`ddmr.prepare`)."""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module under ddmr.data; imported on first use (lightning is slow to import)
_LAZY: dict[str, str] = {
    "PreparedDataModule": "datamodule",
    "PreparedDataset": "dataset",
    "sample_cohort": "cohort",
    "sample_cohort_dir": "cohort",
    "cohort_label_names": "cohort",
    "cohort_split": "cohort",
    "make_ct_phantom": "phantoms",
    "write_phantom_cohort": "phantoms",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"ddmr.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ddmr.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
