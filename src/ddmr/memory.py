"""Giving freed memory back to the system between the steps of a registration.

glibc keeps the memory of freed allocations below its (self-raising) mmap threshold in
its heaps; after the engine's levels and the field's trips between grids that is about
0.5 GB on a 1 mm whole head, held by the process while it goes on to the next step
(benchmarks/RESULTS.md, issue 21 memory). ``malloc_trim`` returns it; it costs
milliseconds. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Return the C heap's free memory to the system (glibc; elsewhere a no-op)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
