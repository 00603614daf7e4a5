"""Issue 34: ``scripts/slurm/register_array.sh``, an array job of ``ddmr register --pairs
--shard`` tasks and a ``--merge`` job after it, run by a stand-in ``sbatch``.

The stand-in (first on PATH) runs each job at once, here: the tasks of ``--array=A-B``
side by side with SLURM's variables (``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_COUNT``,
``SLURM_CPUS_PER_TASK``, ...), and a job with ``--dependency=afterok:ID`` only when every
task of ID exited 0 (else it is recorded as never satisfied, as SLURM cancels it with
``--kill-on-invalid-dep=yes``). Each job's record (options, exit codes, start and end
times) is a JSON file in ``$SBATCH_STAND_IN_STATE``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddmr.io.images import save_image
from register_helpers import other_moving, write_batch_images

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "register_array.sh"

SBATCH = '''\
"""Stand-in sbatch (tests/test_slurm_array.py): runs the job now, here."""
import json, os, re, shlex, subprocess, sys, time
from pathlib import Path

FLAGS = ("--parsable",)
state = Path(os.environ["SBATCH_STAND_IN_STATE"])
state.mkdir(exist_ok=True)
args, options = sys.argv[1:], {}
while args and args[0].startswith("-"):
    name, equals, value = args.pop(0).partition("=")
    options[name] = value if equals or name in FLAGS else args.pop(0)
script, script_args = args[0], args[1:]
job = 1000 + len(list(state.glob("job-*.json")))
record = {"id": job, "options": options, "args": script_args, "exit_codes": {},
          "state": "ran", "started": time.time()}
dependency = options.get("--dependency")
if dependency:
    kind, _, ids = dependency.partition(":")
    assert kind == "afterok", dependency
    for other in ids.split(":"):
        done = json.loads((state / f"job-{other}.json").read_text())
        if done["state"] != "ran" or any(done["exit_codes"].values()):
            record["state"] = "never satisfied"
tasks = [None]
if "--array" in options:
    first, last = re.fullmatch(r"(\\d+)-(\\d+)", options["--array"]).groups()
    tasks = list(range(int(first), int(last) + 1))
shebang = shlex.split(Path(script).read_text().splitlines()[0][2:])
running = {}
for task in tasks if record["state"] == "ran" else []:
    env = dict(os.environ, SLURM_JOB_ID=str(job), SLURM_SUBMIT_DIR=os.getcwd(),
               SLURM_JOB_NAME=options.get("--job-name", Path(script).name))
    if "--cpus-per-task" in options:
        env["SLURM_CPUS_PER_TASK"] = options["--cpus-per-task"]
    log = options.get("--output", "slurm-%j.out" if task is None else "slurm-%A_%a.out")
    log = log.replace("%j", str(job)).replace("%A", str(job)).replace("%x", env["SLURM_JOB_NAME"])
    if task is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=str(task),
                   SLURM_ARRAY_TASK_COUNT=str(len(tasks)), SLURM_ARRAY_TASK_MIN=str(tasks[0]),
                   SLURM_ARRAY_TASK_MAX=str(tasks[-1]))
        log = log.replace("%a", str(task))
    with open(log, "w") as out:
        running[str(task)] = subprocess.Popen([*shebang, script, *script_args], env=env,
                                              stdout=out, stderr=subprocess.STDOUT)
record["exit_codes"] = {task: process.wait() for task, process in running.items()}
record["ended"] = time.time()
(state / f"job-{job}.json").write_text(json.dumps(record))
print(job if "--parsable" in options else f"Submitted batch job {job}")
'''

#: The files of every registered pair's folder.
PAIR_FILES = ("warped.nii.gz", "displacement.nii.gz", "affine.mat",
              "residual_displacement.nii.gz", "inverse_displacement.nii.gz", "jacobian.nii.gz",
              "overlay.png", "summary.json")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Tiny images: a fixed one, two moving ones, noise (it fails QC), a tiny model."""
    folder = write_batch_images(tmp_path_factory.mktemp("slurm"))
    noise = np.random.default_rng(0).uniform(0, 100, other_moving().shape)
    save_image(folder / "noise.nii.gz", noise.astype(np.float32), other_moving())
    return folder


def _write_pairs(path: Path, movings: dict[str, str], files: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fixed", "moving"])
        for ident, moving in movings.items():
            writer.writerow([ident, files / "fixed.nii.gz", files / moving])


def _submit(tmp_path: Path, files: Path, pairs: Path, out: Path, tasks: int = 2
            ) -> subprocess.CompletedProcess:
    """The script on the "login node", with the stand-in sbatch first on PATH."""
    bin_folder = tmp_path / "bin"
    if not bin_folder.exists():
        bin_folder.mkdir()
        (bin_folder / "sbatch").write_text(f"#!{sys.executable}\n{SBATCH}")
        (bin_folder / "sbatch").chmod(0o755)
    ddmr = shutil.which("ddmr") or f"{sys.executable} -m ddmr"
    env = dict(os.environ, PATH=f"{bin_folder}{os.pathsep}{os.environ['PATH']}",
               SBATCH_STAND_IN_STATE=str(tmp_path / "jobs"), TASKS=str(tasks), CPUS="1",
               DDMR=ddmr)
    return subprocess.run(["bash", str(SCRIPT), str(pairs), str(out), "--model",
                           str(files / "tiny.safetensors"), "--fast"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def _jobs(tmp_path: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((tmp_path / "jobs").iterdir())]


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_array_of_shards_then_merge(files, tmp_path):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "cohort"
    _write_pairs(pairs, {"a": "moving.nii.gz", "b": "other.nii.gz", "c": "noise.nii.gz"},
                 files)
    submitted = _submit(tmp_path, files, pairs, out)
    assert submitted.returncode == 0, submitted.stderr
    assert "submitted array job 1000 (2 tasks of 1 CPU(s)) and merge job 1001" in \
        submitted.stdout
    array, merge = _jobs(tmp_path)
    assert array["options"]["--array"] == "0-1" and array["options"]["--cpus-per-task"] == "1"
    assert array["args"][:4] == ["--task", "2", str(pairs), str(out)]
    assert array["exit_codes"] == {"0": 0, "1": 0}  # "c" failed QC: its task still ends well
    assert merge["options"]["--dependency"] == "afterok:1000"
    assert merge["state"] == "ran" and merge["exit_codes"] == {"None": 0}
    assert merge["started"] >= array["ended"]
    for task, shard in (("0", "1/2"), ("1", "2/2")):  # one thread setting per task
        log = (tmp_path / f"ddmr-register-1000_{task}.out").read_text()
        assert f"shard {shard}, 1 thread(s)" in log, log
    rows = _read(out / "batch.csv")
    assert [row["id"] for row in rows] == ["a", "b", "c"]
    assert [row["qc"] for row in rows] == ["pass", "pass", "fail"]
    assert "structure" in rows[2]["qc_failed"]
    assert [row["id"] for row in _read(out / "batch-1-of-2.csv")] == ["a", "c"]
    assert [row["id"] for row in _read(out / "batch-2-of-2.csv")] == ["b"]
    for ident in "abc":
        missing = [name for name in PAIR_FILES if not (out / ident / name).is_file()]
        assert not missing, (ident, missing)
        summary = json.loads((out / ident / "summary.json").read_text())
        assert summary["batch_input"]["moving"]["path"].endswith(
            {"a": "moving.nii.gz", "b": "other.nii.gz", "c": "noise.nii.gz"}[ident])


def test_a_failed_task_cancels_the_merge_and_the_same_command_finishes(files, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(files, data)
    (data / "broken.nii.gz").write_bytes(b"not an image")
    pairs, out = tmp_path / "pairs.csv", tmp_path / "cohort"
    _write_pairs(pairs, {"a": "moving.nii.gz", "b": "broken.nii.gz"}, data)
    assert _submit(tmp_path, data, pairs, out).returncode == 0
    array, merge = _jobs(tmp_path)
    assert array["exit_codes"] == {"0": 0, "1": 2}
    assert merge["state"] == "never satisfied" and not (out / "batch.csv").exists()
    done = (out / "a" / "summary.json").stat().st_mtime_ns
    shutil.copy(data / "other.nii.gz", data / "broken.nii.gz")  # the input fixed
    assert _submit(tmp_path, data, pairs, out).returncode == 0
    array, merge = _jobs(tmp_path)[2:]
    assert array["exit_codes"] == {"0": 0, "1": 0} and merge["exit_codes"] == {"None": 0}
    assert [row["id"] for row in _read(out / "batch.csv")] == ["a", "b"]
    assert (out / "a" / "summary.json").stat().st_mtime_ns == done  # reused, not redone
    log = (tmp_path / "ddmr-register-1002_0.out").read_text()
    assert "0 registered now, 1 done before and reused" in log, log
