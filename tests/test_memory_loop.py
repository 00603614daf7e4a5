"""Issue 34: memory does not grow over many ``ddmr.register`` calls in one process.

A quick form of ``benchmarks/bench_memory_loop.py``: one small pair registered and saved
15 times; over the last 10 calls the resident memory must grow by less than a quarter of
what one call's result holds per call (so that keeping a result, or anything of its
size, per call fails the test); single readings vary by a few MB with the allocator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from register_helpers import grid, rotation, sample_scene

CALLS, MEASURED = 15, 10


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
def test_resident_memory_is_flat_over_repeated_registrations(tmp_path):
    import ddmr
    from ddmr.registration.settings import EngineSettings

    fixed_geometry = grid((56, 56, 48), (1.5, 1.5, 1.5), np.eye(3), (0.0, 0.0, 0.0))
    moving_geometry = grid((52, 56, 44), (1.6, 1.5, 1.7), rotation((0, 0, 1), 8), (2, -1, 0))
    fixed = (sample_scene(fixed_geometry, sharp=True), fixed_geometry)
    moving = (sample_scene(moving_geometry, (1, 2, 0), sharp=True), moving_geometry)
    engine = EngineSettings(iterations=(10, 5, 0))
    rss, held = [], 0
    for _ in range(CALLS):
        result = ddmr.register(fixed, moving, model=False, engine=engine)
        result.save(tmp_path / "out", overwrite=True)
        held = sum(value.nbytes for value in vars(result).values()
                   if isinstance(value, np.ndarray)) / 2**20
        del result
        rss.append(_rss_mb())
    # the least-squares slope over the last calls (single readings vary by a few MB)
    slope = float(np.polyfit(np.arange(MEASURED), rss[-MEASURED:], 1)[0])
    limit = max(1.0, 0.25 * held)  # MB per call: a quarter of a result
    assert held > 4.0  # (a result is large enough for keeping one per call to show)
    assert slope < limit, (f"RSS grew {slope:.2f} MB per call over the last {MEASURED} "
                           f"calls (a result holds {held:.1f} MB): {np.round(rss, 1)}")
