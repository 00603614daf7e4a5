"""How long this process has been running: the whole-process seconds that
``summary.json`` reports beside its stages (interpreter start and imports included)."""

from __future__ import annotations

import os
import time


def process_seconds() -> float | None:
    """Seconds since this process started (10 ms resolution on Linux, from ``/proc``; the
    ``psutil`` package elsewhere when installed), or None when neither can tell."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # the fields after the command name (which may hold spaces); starttime is
            # the 22nd field of the whole line, in clock ticks after boot
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return max(0.0, time.time() - psutil.Process().create_time())
