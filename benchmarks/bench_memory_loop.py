"""Resident memory over many ``ddmr.register`` calls in one process (issue 34).

    python benchmarks/bench_memory_loop.py [--calls 200] [--engine-spacing 4] [--no-save]
        [--cycle] [--threads 2] [--tracemalloc] [--out benchmarks/memory_loop/rows.jsonl]

A long-running process (a Nipype worker, a notebook, ``ddmr register --pairs`` over a
cohort) calls :func:`ddmr.register` again and again; memory that each call leaves behind
adds up. This registers one bundled brain pair (96^3, 2 mm, with label maps; the shipped
model, the engine at ``--engine-spacing`` mm so that 200 calls take minutes) ``--calls``
times (``--cycle``: the 30 ordered pairs of the six bundled heads in turn, a cohort whose
pairs differ in their foreground boxes and so in the engine's grids), saves each result
into the same folder (as a batch does; ``--no-save`` skips it),
and after each call reads the process's resident memory (``VmRSS``) and its peak
(``VmHWM``) from ``/proc/self/status``. It prints the growth from call 10 (after the
first calls' caches and pools have filled) to the last, and the least-squares slope in MB
per 100 calls over the same calls, and appends one JSON row per call, then one summary
row, to ``--out``. ``--tracemalloc`` also records the Python heap (slower): the blocks
that grew most between call 10 and the last are printed, to find a leak's home.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import permutations
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "ddmr" / "data" / "sample" / "brain"
FIXED, MOVING = "pycortex-s1", "itk-kmeans"
#: The bundled heads (``--cycle`` registers their ordered pairs in turn).
HEADS = ("pycortex-s1", "itk-kmeans", "colin27", "mni152-2009a", "pydeface-mean", "robex-ref")
#: The call from which growth is measured (the first calls fill caches and pools).
FROM_CALL = 10


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) memory of this process in MB (``/proc/self/status``)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024  # kB -> MB
    return values["VmRSS"], values["VmHWM"]


def growth(calls: list[int], rss: list[float], start: int = FROM_CALL) -> dict[str, float]:
    """RSS growth from call ``start`` to the last (MB) and the least-squares slope over
    those calls (MB per 100 calls); from the first call when there are fewer."""
    start = start if calls[-1] > start else calls[0]
    index = [k for k, call in enumerate(calls) if call >= start]
    x = np.asarray([calls[k] for k in index], dtype=np.float64)
    y = np.asarray([rss[k] for k in index], dtype=np.float64)
    slope = float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else 0.0
    return {"from_call": int(x[0]), "to_call": int(x[-1]),
            "growth_mb": round(float(y[-1] - y[0]), 2),
            "mb_per_100_calls": round(100 * slope, 2)}


def machine_load() -> str:
    """``uptime``'s line (the load of the machine while it ran)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--engine-spacing", type=float, default=4.0,
                        help="the engine's finest voxel size in mm (default: 4)")
    parser.add_argument("--model", default=None, help="model (default: the shipped one)")
    parser.add_argument("--no-save", action="store_true", help="do not write the results")
    parser.add_argument("--cycle", action="store_true",
                        help="the ordered pairs of the six bundled heads in turn (default: "
                        f"{FIXED} <- {MOVING} every time)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace the Python heap (slower)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "memory_loop" / "rows.jsonl")
    args = parser.parse_args(argv)

    import ddmr  # (first: it sets OMP_WAIT_POLICY before torch loads)
    from ddmr.registration.settings import EngineSettings
    from ddmr.threads import use_threads

    threads = use_threads(args.threads)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(10)
    engine = EngineSettings(spacing=args.engine_spacing)
    pairs = list(permutations(HEADS, 2)) if args.cycle else [(FIXED, MOVING)]
    run = {"kind": "run", "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "pair": "30 ordered pairs of the bundled heads in turn" if args.cycle
           else f"{FIXED} <- {MOVING}", "calls": args.calls,
           "engine_spacing": args.engine_spacing, "save": not args.no_save,
           "threads": threads, "model": args.model or "shipped default",
           "tracemalloc": args.tracemalloc, "python": platform.python_version(),
           "torch": sys.modules["torch"].__version__, "numpy": np.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "uptime_before": machine_load()}
    print(json.dumps(run), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    snapshot = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, open(args.out, "a") as out:
        out.write(json.dumps(run) + "\n")
        for call in range(1, args.calls + 1):
            fixed, moving = pairs[(call - 1) % len(pairs)]
            inputs = [SAMPLE / folder / f"{name}.nii.gz" for folder, name in
                      (("images", fixed), ("images", moving), ("labels", fixed),
                       ("labels", moving))]
            tick = time.perf_counter()
            result = ddmr.register(*inputs, model=args.model, engine=engine)
            if not args.no_save:
                result.save(Path(scratch) / "out", overwrite=True)
            dsc = result.summary["metrics"].get("dsc")
            del result
            rss, peak = memory_mb()
            row = {"kind": "call", "call": call, "seconds": round(time.perf_counter() - tick, 3),
                   "rss_mb": round(rss, 1), "peak_mb": round(peak, 1),
                   "dsc": None if dsc is None else round(dsc, 4),
                   "gc_objects": len(gc.get_objects()) if call % 10 == 0 else None}
            if args.tracemalloc:
                import tracemalloc

                row["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
                if call == FROM_CALL:
                    snapshot = tracemalloc.take_snapshot()
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            if call % 10 == 0 or call == 1:
                print(f"call {call:4d}: {row['seconds']:.2f} s, RSS {rss:.1f} MB, peak "
                      f"{peak:.1f} MB", flush=True)
        calls = [row["call"] for row in rows]
        summary = {"kind": "summary", **growth(calls, [row["rss_mb"] for row in rows]),
                   "rss_first_mb": rows[0]["rss_mb"], "rss_last_mb": rows[-1]["rss_mb"],
                   "peak_mb": rows[-1]["peak_mb"],
                   "seconds_per_call": round((time.perf_counter() - started) / len(rows), 2),
                   "uptime_after": machine_load()}
        if args.tracemalloc and snapshot is not None:
            import tracemalloc

            top = tracemalloc.take_snapshot().compare_to(snapshot, "traceback")[:8]
            summary["traced_growth_mb"] = round(
                (rows[-1]["traced_mb"] - rows[FROM_CALL - 1]["traced_mb"]), 3)
            for stat in top:
                print(f"{stat.size_diff / 1024:+.1f} kB in {stat.count_diff:+d} blocks:",
                      *stat.traceback.format()[-4:], sep="\n  ")
        out.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    print(f"RSS growth from call {summary['from_call']} to {summary['to_call']}: "
          f"{summary['growth_mb']:+.1f} MB ({summary['mb_per_100_calls']:+.2f} MB per 100 "
          f"calls); peak {summary['peak_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
