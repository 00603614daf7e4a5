"""Threads on a busy machine (issue 18): the same ``ddmr register`` with the default thread
count and with ``--threads 1``, on an idle machine and with another process keeping every
core busy, and with OpenMP's spinning waits (``OMP_WAIT_POLICY=ACTIVE``, the default of
OpenMP without DDMR) beside DDMR's passive ones; wall and CPU seconds, medians.

    python benchmarks/bench_threads.py [--repeats 3]

The load: one busy-looping process per core (``os.sched_getaffinity``), started before
and stopped after each measurement.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = "while True: pass"


def busy_processes(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def register(threads: int | None, output: Path, env: dict[str, str] | None = None,
             extra: tuple[str, ...] = ()) -> tuple[float, float]:
    """One ``ddmr register`` process on the bundled test pair into ``output``, with
    ``env`` added to the environment (``OMP_NUM_THREADS`` removed: the default is the
    cores this process may use) and ``extra`` arguments: (wall s, CPU s)."""
    from ddmr.data.cohort import sample_cohort_dir

    root = sample_cohort_dir() / "images"
    environment = dict(os.environ, **(env or {}))
    environment.pop("OMP_NUM_THREADS", None)
    command = [sys.executable, "-m", "ddmr", "register", "--fixed",
               str(root / "pycortex-s1.nii.gz"), "--moving", str(root / "itk-kmeans.nii.gz"),
               "--no-qc", "-o", str(output), *extra]
    if threads is not None:
        command += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    cases = [("idle", None, "PASSIVE"), ("idle", 1, "PASSIVE"),
             ("loaded", None, "PASSIVE"), ("loaded", 1, "PASSIVE"),
             ("loaded", None, "ACTIVE"), ("loaded", 1, "ACTIVE")]
    print(f"{cores} cores; ddmr register on the bundled test pair; medians of "
          f"{args.repeats} runs")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        run = 0
        for load, threads, policy in cases:
            walls, cpus = [], []
            for _ in range(args.repeats):
                load_processes = busy_processes(cores) if load == "loaded" else []
                try:
                    time.sleep(0.5 if load_processes else 0)
                    wall, cpu = register(threads, Path(folder) / f"out-{run}",
                                         {"OMP_WAIT_POLICY": policy})
                finally:
                    stop(load_processes)
                run += 1
                walls.append(wall)
                cpus.append(cpu)
            results[load, threads, policy] = statistics.median(walls)
            label = f"{load:6s} threads {threads or f'default ({cores})'!s:12s} {policy:8s}"
            print(f"{label} wall {statistics.median(walls):6.1f} s  CPU "
                  f"{statistics.median(cpus):6.1f} s", flush=True)
    for policy in ("PASSIVE", "ACTIVE"):
        ratio = results["loaded", None, policy] / results["loaded", 1, policy]
        print(f"loaded, {policy}: default threads take {ratio:.2f}x the wall time of 1 thread")


if __name__ == "__main__":
    main()
