"""Deprecated alias of :mod:`ddmr.designs` (the loss designs), kept for one release:
``import ddmr.config`` warns and gives the same names; import :mod:`ddmr.designs`."""

from ddmr.deprecated import warn_renamed
from ddmr.designs import (
    DESIGNS,
    IMAGE_TERMS,
    SEGMENTATION_TERMS,
    SIMILARITIES,
    TERM_NAMES,
    Design,
    design_rows,
    get_design,
)

__all__ = ["DESIGNS", "IMAGE_TERMS", "SEGMENTATION_TERMS", "SIMILARITIES", "TERM_NAMES",
           "Design", "design_rows", "get_design"]

warn_renamed("the module ddmr.config", "ddmr.designs", stacklevel=2)
