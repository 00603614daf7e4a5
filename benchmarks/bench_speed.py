"""Whole processes side by side (issue 28): ``ddmr register`` against greedy and ANTs SyN,
each method its own process, timed from launch until it has written its last file.

    python benchmarks/bench_speed.py run --kind 2mm [--pairs test|all] [--repeats N]
        [--methods ddmr,greedy,syn] [--label NAME] [--ddmr-command CMD] [--only F<-M] [--force]
        [--before-command CMD]
    python benchmarks/bench_speed.py table --kind 2mm [--baseline ddmr]
    python benchmarks/bench_speed.py heads [--png FOLDER]   # build and check the 1 mm heads

Pairs (:mod:`speed_pairs`): ``2mm`` the bundled cohort's heads (96^3, 2 mm, skull-stripped,
``test``: its two test subjects both ways); ``1mm`` whole heads of different people, not
skull-stripped, each on its own native header (``test``: pycortex-s1 and itk-kmeans both
ways; ``all``: every ordered pair of four individuals).

Methods, each one process with ``OMP_NUM_THREADS`` = ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
= 2:

``ddmr``
    ``ddmr register --fixed F --moving M -o OUT`` with its defaults (QC included; exit 3,
    QC failed, still counts); ``--ddmr-command`` runs another checkout's ``ddmr`` and
    ``--label`` names its rows. The default is the ``ddmr`` next to this Python (no pyenv
    shim in the timing).
``before``
    ``ddmr register`` run by ``--before-command`` (an earlier checkout, e.g. ``env
    PYTHONPATH=/tmp/before/src python -m ddmr``), interleaved with the others: on a noisy
    machine a before/after comparison needs the two run alternately.
``greedy``, ``syn``
    ``python bench_speed.py _peer NAME F M FIELD``: reads both images, runs the peer as
    ``bench_peers.py`` does (:func:`bench_peers.run_method`: greedy with 2 threads, SyN with
    antspyx's defaults) and writes its field as an ITK displacement field, last.

Per row: ``seconds`` wall time of the whole process (launch to exit), ``cpu_s`` its user +
system CPU seconds, ``peak_mb`` its peak resident memory (MB, ``ru_maxrss``, reported by a
fresh ``python -S`` that launches it: see :data:`LAUNCHER`), the scores of
``bench_peers.score`` from the written field (computed after, untimed: DSC over all labels,
tissue and subcortical apart, HD95 mm, centroid TRE mm, folding %), ddmr's ``runtime_s``
(seconds per stage, from ``summary.json``) and ``start_imports_s`` (wall time outside
``runtime_s``: interpreter start and imports), the peers' ``call_seconds`` (their own
registration call), the 1-minute load average before and after. Rows go to
``benchmarks/speed/KIND.jsonl`` (``--out``); a rerun skips (pair, method, repeat) rows
already there unless ``--force``. ``table`` prints medians over repeats, then over pairs, as
markdown (for ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_peers  # noqa: E402
import speed_pairs  # noqa: E402

OUT = HERE / "speed"
METHODS = ("ddmr", "greedy", "syn")
TIMEOUT = 3600.0  # s, per process


def child_env() -> dict[str, str]:
    """The environment of every timed process: the benchmark's thread count."""
    threads = str(bench_peers.THREADS)
    return dict(os.environ, OMP_NUM_THREADS=threads, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=threads)


#: Runs a command as the child of a fresh, small Python and prints that child's rusage:
#: a process forked from this one would count this one's memory in its peak (the kernel
#: carries the larger address space's high-water mark over ``exec``).
LAUNCHER = """import json, os, sys
pid = os.fork()
if pid == 0:
    os.dup2(1, 2)  # the command's errors to its log, beside its output
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"status": status, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "maxrss_kb": usage.ru_maxrss}), file=sys.stderr)
"""


def timed(command: list[str], log: Path, timeout: float = TIMEOUT) -> dict:
    """Run ``command`` (output to ``log``): wall seconds from launch to exit, CPU seconds,
    peak resident memory (MB) of that process, exit code. It is started by a fresh
    ``python -S`` (a few MB; ~30 ms of the wall time) that reports its rusage."""
    with open(log, "wb") as handle:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, *command],
                                   stdout=handle, stderr=subprocess.PIPE, env=child_env(),
                                   start_new_session=True)
        try:
            _, report = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the command
            process.communicate()
            return {"seconds": time.perf_counter() - start, "cpu_s": math.nan,
                    "peak_mb": math.nan, "returncode": -signal.SIGKILL}
        seconds = time.perf_counter() - start
    usage = json.loads(report.decode().strip().splitlines()[-1])
    return {"seconds": seconds, "cpu_s": usage["cpu_s"], "peak_mb": usage["maxrss_kb"] / 1024,
            "returncode": os.waitstatus_to_exitcode(usage["status"])}


def read_field(path: Path, fixed_geometry) -> np.ndarray:
    """A written ITK displacement field (LPS mm) -> (3, I, J, K) RAS mm on the fixed grid."""
    from ddmr.io.fields import load_displacement
    from ddmr.spatial.field import voxels_to_mm

    displacement, geometry = load_displacement(path)
    if not geometry.isclose(fixed_geometry):
        raise RuntimeError(f"{path}: field on {geometry}, expected the fixed {fixed_geometry}")
    return voxels_to_mm(displacement, geometry)


def score(pair: dict, field: Path) -> dict:
    """``bench_peers.score`` of a written field on a pair of files."""
    from ddmr.io.images import load_image, load_labels

    sides = {"truth": None}
    for side in ("fixed", "moving"):
        image = load_image(pair[side])
        labels, geometry = load_labels(pair[f"{side}_labels"])
        if not geometry.isclose(image[1]):
            raise RuntimeError(f"{pair[f'{side}_labels']} is not on the grid of {pair[side]}")
        sides[side], sides[f"{side}_labels"] = image, labels
    return bench_peers.score(sides, read_field(field, sides["fixed"][1]))


def run_one(method: str, pair: dict, ddmr_command: list[str] | None, folder: Path
            ) -> tuple[dict, Path]:
    """One timed process (``ddmr_command`` runs ``ddmr``, None for a peer); returns its
    row part and the field it wrote."""
    if ddmr_command is not None:
        target = folder / "out"
        command = [*ddmr_command, "register", "--fixed", str(pair["fixed"]),
                   "--moving", str(pair["moving"]), "-o", str(target)]
        field = target / "displacement.nii.gz"
    else:
        field = folder / "displacement.nii.gz"
        command = [sys.executable, str(Path(__file__).resolve()), "_peer", method,
                   str(pair["fixed"]), str(pair["moving"]), str(field)]
    row = {"command": shlex.join(command), **timed(command, folder / "log.txt")}
    if row["returncode"] not in (0, 3) or not field.is_file():  # 3: ddmr's QC failed
        tail = (folder / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"exit {row['returncode']}: {' | '.join(tail)}")
    if ddmr_command is not None:
        summary = json.loads((target / "summary.json").read_text())
        runtime = summary["runtime_s"]
        row.update(runtime_s=runtime, start_imports_s=row["seconds"] - runtime["total"],
                   qc=summary["qc"]["passed"])
    else:
        row["call_seconds"] = json.loads(field.with_suffix("").with_suffix(".json")
                                         .read_text())["seconds"]
    return row, field


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(args: argparse.Namespace) -> None:
    """Every method on every pair, ``--repeats`` times, interleaved; appends rows."""
    out = Path(args.out) / f"{args.kind}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["pair"], r["method"], r["repeat"]) for r in read_rows(out) if "error" not in r}
    ddmr_command = shlex.split(args.ddmr_command) if args.ddmr_command else [
        shutil.which("ddmr", path=str(Path(sys.executable).parent)) or "ddmr"]
    commands = {"ddmr": ddmr_command}
    if "before" in args.methods.split(","):
        if not args.before_command:
            raise SystemExit("the method before needs --before-command")
        commands["before"] = shlex.split(args.before_command)
    for pair in speed_pairs.pairs(args.kind, args.pairs):
        if args.only and pair["id"] not in args.only.split(","):
            continue
        for repeat in range(args.repeats):
            for method in args.methods.split(","):
                name = args.label if method == "ddmr" else method
                if (pair["id"], name, repeat) in done and not args.force:
                    continue
                row = {"pair": pair["id"], "method": name, "tool": method, "repeat": repeat,
                       "load_before": os.getloadavg()[0]}
                with tempfile.TemporaryDirectory(prefix="ddmr-speed-") as folder:
                    try:
                        part, field = run_one(method, pair, commands.get(method),
                                              Path(folder))
                        row["load_after"] = os.getloadavg()[0]
                        row.update(part, **score(pair, field))
                    except Exception as error:  # a finding: record why
                        row["error"] = f"{type(error).__name__}: {error}"
                row.setdefault("load_after", os.getloadavg()[0])
                row["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                with open(out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(pair["id"], name, repeat, {k: row.get(k) for k in (
                    "seconds", "peak_mb", "dsc", "hd95", "start_imports_s", "error")}, flush=True)


def peer(args: argparse.Namespace) -> None:
    """The peer's whole process: read, register as bench_peers does, write the field (RAS
    mm as an ITK displacement field, last) after a JSON of its call's seconds."""
    from ddmr.io.fields import save_displacement
    from ddmr.io.images import load_image

    bench_peers.set_threads()
    fixed, moving = load_image(args.fixed), load_image(args.moving)
    displacement, seconds, details = bench_peers.run_method(
        args.name, {"fixed": fixed, "moving": moving}, None)
    field = Path(args.field)
    field.with_suffix("").with_suffix(".json").write_text(
        json.dumps({"seconds": seconds, "details": details}, default=str))
    save_displacement(field, displacement, fixed[1], units="mm")


def table(args: argparse.Namespace) -> None:
    """Medians over repeats then pairs, per method; ratios to ``--baseline``'s seconds; the
    ddmr rows' seconds per stage."""
    import pandas as pd

    rows = read_rows(Path(args.out) / f"{args.kind}.jsonl")
    ok = {(r["pair"], r["method"], r["repeat"]): r for r in rows if "error" not in r}  # last
    frame = pd.DataFrame(list(ok.values()))
    columns = ["dsc_tissue", "dsc_subcortical", "dsc", "hd95", "folding", "seconds", "cpu_s",
               "peak_mb"]
    per_pair = frame.groupby(["method", "pair"])[columns].median()
    summary = per_pair.groupby("method").median()
    summary.insert(0, "pairs", per_pair.groupby("method").size())
    base = summary["seconds"].get(args.baseline, np.nan)
    summary[f"s / {args.baseline} s"] = [f"{s / base:.1f}x" for s in summary["seconds"]]
    print(f"{args.kind}: whole processes, medians over repeats then over pairs "
          f"({frame['pair'].nunique()} pairs, {bench_peers.THREADS} threads; seconds: wall "
          "time launch to exit; cpu_s: its CPU seconds; peak_mb: its peak resident memory)\n")
    print(summary.to_markdown(floatfmt=".3f"))
    for method in summary.index.drop(args.baseline, errors="ignore"):
        print(f"{method}/{args.baseline} {summary.loc[method, 'seconds'] / base:.1f}x")
    staged = frame[frame["runtime_s"].notna()] if "runtime_s" in frame else frame.iloc[:0]
    if len(staged):
        stages = pd.DataFrame(list(staged["runtime_s"]), index=staged.index)
        stages.insert(0, "start+imports", staged["start_imports_s"])
        stages["wall"] = staged["seconds"]
        stages[["method", "pair"]] = staged[["method", "pair"]]
        medians = stages.groupby(["method", "pair"]).median().groupby("method").median()
        medians = medians[[c for c in medians if c not in ("total", "wall")] + ["total", "wall"]]
        print("\nddmr: seconds per stage (summary.json runtime_s; start+imports = wall - "
              "total), medians\n")
        print(medians.to_markdown(floatfmt=".2f"))
    for row in rows:
        if "error" in row:
            print(f"error: {row['pair']} {row['method']} {row['repeat']}: {row['error']}")


def heads(args: argparse.Namespace) -> None:
    """Build the 1 mm heads and print where their carried labels sit (mean intensities)."""
    folder = Path(args.png) if args.png else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    for sid in speed_pairs.INDIVIDUALS:
        check = speed_pairs.label_check(sid, folder / f"{sid}.png" if folder else None)
        print(" ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}"
                       for k, v in check.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--kind", choices=("2mm", "1mm"), default="2mm")
    run_parser.add_argument("--pairs", choices=("test", "all"), default="test")
    run_parser.add_argument("--methods", default=",".join(METHODS))
    run_parser.add_argument("--repeats", type=int, default=1)
    run_parser.add_argument("--only", default=None, help="these pair ids alone (F<-M,...)")
    run_parser.add_argument("--label", default="ddmr", help="name of the ddmr rows")
    run_parser.add_argument("--ddmr-command", default=None,
                            help="ddmr executable (default: the one next to this Python)")
    run_parser.add_argument("--before-command", default=None,
                            help="the ddmr command of the method before (another checkout)")
    run_parser.add_argument("--force", action="store_true", help="rerun rows already done")
    run_parser.add_argument("--out", default=str(OUT), help="folder of the rows")
    table_parser = sub.add_parser("table")
    table_parser.add_argument("--kind", choices=("2mm", "1mm"), default="2mm")
    table_parser.add_argument("--out", default=str(OUT), help="folder of the rows")
    table_parser.add_argument("--baseline", default="ddmr", help="method the ratios divide by")
    heads_parser = sub.add_parser("heads")
    heads_parser.add_argument("--png", default=None, help="folder for overlay slices")
    peer_parser = sub.add_parser("_peer")  # the peers' own process (used by run)
    for name in ("name", "fixed", "moving", "field"):
        peer_parser.add_argument(name)
    args = parser.parse_args()
    {"run": run, "table": table, "heads": heads, "_peer": peer}[args.command](args)


if __name__ == "__main__":
    main()
