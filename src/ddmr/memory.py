"""Memory: what the machine can give, what one image may take, and giving freed memory
back to the system between the steps of a registration.

:func:`memory_budget` is the most one input image may take (``DDMR_MAX_IMAGE_MB``, else
1/8 of physical memory; :func:`check_memory_budget` refuses an image above it);
:func:`available_memory` what this process can still allocate (cgroup limits included).

glibc keeps the memory of freed allocations below its (self-raising) mmap threshold in
its heaps; after the engine's levels and the field's trips between grids that is about
0.5 GB on a 1 mm whole head, held by the process while it goes on to the next step
(benchmarks/RESULTS.md, issue 21 memory). ``malloc_trim`` returns it; it costs
milliseconds. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ddmr.errors import InputError

PathLike = str | os.PathLike[str]


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


#: Environment variable: the most memory (MB) that one input image may take as float32.
MEMORY_BUDGET_ENV = "DDMR_MAX_IMAGE_MB"

#: Without :data:`MEMORY_BUDGET_ENV`, one image may take this fraction of physical memory.
MEMORY_BUDGET_FRACTION = 1 / 8

#: Without :data:`MEMORY_BUDGET_ENV` and where physical memory cannot be read: 2 GiB.
MEMORY_BUDGET_FALLBACK = 2 << 30


def memory_budget() -> int:
    """The most bytes one input image may take in memory as float32.

    ``DDMR_MAX_IMAGE_MB`` sets it (in MB); otherwise it is 1/8 of the machine's physical
    memory: registration and preparation hold several float copies of an image (and a
    3-channel field on its grid), so an image above this would exhaust memory mid-way.
    """
    from ddmr.errors import ConfigError

    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if text:
        try:
            megabytes = float(text)
        except ValueError:
            megabytes = float("nan")
        if not math.isfinite(megabytes) or megabytes <= 0:
            raise ConfigError(f"{MEMORY_BUDGET_ENV}={text!r}: expected a positive number of MB")
        return int(megabytes * 1e6)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return MEMORY_BUDGET_FALLBACK
    return int(physical * MEMORY_BUDGET_FRACTION) if physical > 0 else MEMORY_BUDGET_FALLBACK


#: cgroup (v2, v1) files holding this container's memory limit and current use
_CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                   "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def available_memory() -> int:
    """Bytes this process can still allocate: the system's ``MemAvailable`` (physical
    memory where /proc/meminfo cannot be read), capped by a cgroup (container) limit less
    its current use. For refusing a request before allocating it, not for budgeting."""
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            available = MEMORY_BUDGET_FALLBACK
    for limit_file, usage_file in _CGROUP_MEMORY:
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            available = min(available, max(int(limit) - usage, 0))
    return available


def shape_text(shape: Sequence[int]) -> str:
    """``'I x J x K'`` without spaces, as messages name an image's size."""
    return "x".join(str(int(n)) for n in shape)


def check_memory_budget(path: PathLike, shape: Sequence[int]) -> None:
    """Raise :class:`InputError` if an image of ``shape`` voxels would take more than
    :func:`memory_budget` bytes as float32; the message says what to do."""
    needed = 4 * math.prod(int(n) for n in shape)
    budget = memory_budget()
    if needed > budget:
        source = (f"{MEMORY_BUDGET_ENV}={os.environ[MEMORY_BUDGET_ENV].strip()}"
                  if os.environ.get(MEMORY_BUDGET_ENV, "").strip()
                  else "1/8 of this machine's memory")
        raise InputError(
            f"{path}: image of {shape_text(shape)} voxels needs {needed / 1e6:.1f} MB as "
            f"float32, over the memory budget of {budget / 1e6:.1f} MB ({source}); crop or "
            f"downsample it first, or set {MEMORY_BUDGET_ENV} to a larger number of MB"
        )
