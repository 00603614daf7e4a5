"""How many threads DDMR's numeric work may use: one setting for torch, scipy and BLAS.

Importing :mod:`ddmr` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless torch is already imported
or the variable is set): OpenMP threads that sleep while they wait, so that a core shared
with another process does not stall torch's parallel regions.

The default is the number of cores this process may run on (its CPU affinity mask),
lowered to ``OMP_NUM_THREADS`` when that is set. :func:`use_threads` applies a count to
torch's intra-op pool, to BLAS/OpenMP pools in the process (threadpoolctl), to the
thread pools DDMR itself runs scipy.ndimage work on (:func:`workers`), and to the
environment of child processes and ITK (ANTs). Work that runs on DDMR's own thread
pools is single-threaded inside each task, so the counts never multiply.

A count is checked (:func:`check_threads`) before torch is imported: a whole number from
1 to :data:`THREADS_PER_CPU` times the machine's logical CPUs (OpenMP crashed the process
at ``--threads 100000``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ddmr.errors import ConfigError

logger = logging.getLogger(__name__)

#: Environment variables set for child processes and for libraries that read them late.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")

#: The most threads per logical CPU of the machine that a count may ask for.
THREADS_PER_CPU = 4

_configured: int | None = None


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """:func:`available_cores`, or ``OMP_NUM_THREADS`` when it is a smaller positive
    integer."""
    cores = available_cores()
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return min(cores, int(text))
    return cores


def workers() -> int:
    """Threads for DDMR's own pools (the count set by :func:`use_threads`, else the
    default)."""
    return _configured or default_threads()


def max_threads() -> int:
    """The largest thread count accepted: :data:`THREADS_PER_CPU` per logical CPU."""
    return THREADS_PER_CPU * max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int:
    """``threads`` (None: :func:`default_threads`) checked without importing torch;
    :class:`ConfigError` unless a whole number from 1 to :func:`max_threads`."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ConfigError(f"--threads {threads}: expected a whole number >= 1")
    if threads > max_threads():
        raise ConfigError(f"--threads {threads}: more than {max_threads()} ({THREADS_PER_CPU} "
                          f"per logical CPU of this machine, which has {os.cpu_count() or 1})")
    return int(threads)


def use_threads(threads: int | None = None) -> int:
    """Apply ``threads`` (None: :func:`default_threads`) to torch, BLAS, DDMR's pools and
    the environment of child processes; returns the count applied. Raises
    :class:`ConfigError` for a count :func:`check_threads` refuses."""
    global _configured
    threads = check_threads(threads)
    _configured = threads
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    numba = sys.modules.get("numba")
    if numba is not None:  # the compiled kernels' pool (ddmr.spatial.kernels sets it when
        # it loads numba; set here once it has: this module imports nothing of spatial/)
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        logger.info("threadpoolctl is not installed; BLAS keeps its own thread count")
    logger.info("using %d thread(s)", threads)
    return threads


def on_both(job: Callable[[Any], Any], first: Any, second: Any) -> tuple[Any, Any]:
    """``(job(first), job(second))``, the two on threads of their own when DDMR has more
    than one (for work that releases the GIL: decompression, scipy.ndimage, numpy);
    an error of either is raised as it is."""
    if workers() < 2:
        return job(first), job(second)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(job, second)
        result = job(first)
        return result, pending.result()
