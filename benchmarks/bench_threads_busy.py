"""Threads on a busy machine, again (issue 33 item 5): 1, 2 and the default count.

``ddmr register`` on the bundled test pair with ``--threads 1``, ``--threads 2`` and the
default thread count while a controlled synthetic load runs (``--load`` busy-looping
processes, 5 by default: a load average of about 5 on top of the registration), each
registration its own process; medians of the wall time end to end, of the network and
engine stages (from the run's ``summary.json``) and of CPU time.

    python benchmarks/bench_threads_busy.py [--repeats 5] [--load 5]

The settings are run in turn within each repeat (1, 2, default, 1, 2, default, ...), so
that a drift of the machine's own load touches each of them alike; the load average is
printed before and after. ``--load 0`` measures the same on an idle machine. Arguments
after ``--`` go to ``ddmr register`` (a smoke run: ``-- --engine-iterations 1,1,1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_threads import busy_processes, register, stop

#: thread settings measured: a count, or None for the default
SETTINGS: tuple[int | None, ...] = (1, 2, None)


def measure(threads: int | None, output: Path, extra: list[str]) -> dict[str, float]:
    """One ``ddmr register`` process (:func:`bench_threads.register`): wall and CPU
    seconds, and the seconds of its network and engine stages."""
    wall, cpu = register(threads, output, extra=tuple(extra))
    runtime = json.loads((output / "summary.json").read_text())["runtime_s"]
    return {"wall": wall, "network": runtime.get("network", 0.0),
            "engine": runtime.get("engine", 0.0), "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load", type=int, default=5, help="busy processes (default 5)")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="-- then arguments for ddmr register")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    from ddmr.threads import default_threads

    default = default_threads()
    names = {threads: f"--threads {threads}" if threads else f"default ({default})"
             for threads in SETTINGS}
    print(f"{os.cpu_count()} logical CPUs, default thread count {default}; {args.load} busy "
          f"processes; ddmr register on the bundled test pair {' '.join(extra)}; medians of "
          f"{args.repeats} runs; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    results: dict[int | None, list[dict[str, float]]] = {t: [] for t in SETTINGS}
    load = busy_processes(args.load)
    try:
        time.sleep(1.0 if load else 0)  # the load is running before the first run
        with tempfile.TemporaryDirectory() as folder:
            for repeat in range(args.repeats):
                for threads in SETTINGS:
                    output = Path(folder) / f"out-{repeat}-{threads or 'default'}"
                    results[threads].append(measure(threads, output, extra))
    finally:
        stop(load)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| threads | wall s | network s | engine s | CPU s |\n|---|---|---|---|---|")
    for threads in SETTINGS:
        runs = results[threads]
        medians = [statistics.median(run[key] for run in runs)
                   for key in ("wall", "network", "engine", "cpu")]
        ranges = (f"{min(run['wall'] for run in runs):.1f}-"
                  f"{max(run['wall'] for run in runs):.1f}")
        print(f"| {names[threads]} | {medians[0]:.1f} ({ranges}) | {medians[1]:.2f} | "
              f"{medians[2]:.1f} | {medians[3]:.1f} |")


if __name__ == "__main__":
    main()
