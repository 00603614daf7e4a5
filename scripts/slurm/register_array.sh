#!/usr/bin/env bash
# Register a cohort on a SLURM cluster: an array job of TASKS shards of a pairs CSV, then a
# merge job that runs once every shard has ended well (docs/pipelines.md).
#
#   scripts/slurm/register_array.sh PAIRS.csv OUT [ddmr register options...]
#
# submits
#   1. an array job, tasks 0..TASKS-1, each running (one thread setting per task)
#        ddmr register --pairs PAIRS.csv -o OUT --shard $((SLURM_ARRAY_TASK_ID+1))/TASKS \
#            --threads $SLURM_CPUS_PER_TASK [options...]
#      with OMP/MKL/OpenBLAS/ITK/numba thread variables set to the same count;
#   2. a merge job, --dependency=afterok on the whole array:
#        ddmr register --merge OUT          (OUT/batch.csv)
# and prints the two job ids. Settings from the environment:
#   TASKS  array tasks (shards; default 8)       CPUS  cores per task (default 2)
#   MEM    memory per task (default 4G: a 1 mm whole head peaks at 1.6 GB, 2 mm at 0.7 GB)
#   DDMR   the command (default: ddmr; the jobs inherit this shell's environment, so
#          activate DDMR's environment first, or give e.g. DDMR="/path/to/python -m ddmr")
# and whatever sbatch itself reads (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...).
#
# A task whose pairs all registered exits 0 even when some failed QC (they are in
# batch.csv, "fail"); a pair that could not be registered (bad input) fails its task, and
# then the merge job is cancelled (afterok never satisfied). Fix the input and submit the
# same command again: done pairs are skipped (ddmr register resumes a batch).
#
# The same file is the job script of both jobs (first argument --task or --merge); to rerun
# some tasks by hand, keep the shard count: sbatch --array=3,5 --cpus-per-task=2 \
#   scripts/slurm/register_array.sh --task 8 PAIRS.csv OUT [options...]
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

ddmr=${DDMR:-ddmr}

case "${1:-}" in
--task)
    # one array task: shard SLURM_ARRAY_TASK_ID+1 of SHARDS
    [ $# -ge 4 ] || usage
    shards=$2 pairs=$3 out=$4
    shift 4
    : "${SLURM_ARRAY_TASK_ID:?--task runs as a task of a SLURM array job}"
    threads=${SLURM_CPUS_PER_TASK:-1}
    export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads \
        ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=$threads NUMBA_NUM_THREADS=$threads
    shard="$((SLURM_ARRAY_TASK_ID + 1))/$shards"
    echo "ddmr register: task $SLURM_ARRAY_TASK_ID of array job ${SLURM_ARRAY_JOB_ID:-?}:" \
        "shard $shard, $threads thread(s)"
    status=0
    $ddmr register --pairs "$pairs" -o "$out" --shard "$shard" --threads "$threads" \
        --no-progress "$@" || status=$?
    if [ "$status" -eq 3 ]; then  # registered, QC failed for some pairs: in batch.csv
        echo "ddmr register: shard $shard done; QC failed for some pairs (see the merged" \
            "batch.csv)"
        status=0
    fi
    exit "$status"
    ;;
--merge)
    [ $# -eq 2 ] || usage
    exec $ddmr register --merge "$2"
    ;;
-h | --help | "")
    usage
    ;;
esac

# on the login node: submit the array job and the merge job
[ $# -ge 2 ] || usage
[ -f "$1" ] || { echo "register_array.sh: $1: no such file" >&2; exit 2; }
pairs=$(readlink -f "$1") out=$(readlink -m "$2")  # the jobs may start elsewhere
shift 2
tasks=${TASKS:-8} cpus=${CPUS:-2} mem=${MEM:-4G}
for value in "$tasks" "$cpus"; do
    [[ $value =~ ^[1-9][0-9]*$ ]] || { echo "register_array.sh: TASKS and CPUS must be" \
        "whole numbers >= 1, got '$value'" >&2; exit 2; }
done
script=$(readlink -f "$0")
array=$(sbatch --parsable --job-name=ddmr-register --array="0-$((tasks - 1))" \
    --cpus-per-task="$cpus" --mem="$mem" --output="ddmr-register-%A_%a.out" \
    "$script" --task "$tasks" "$pairs" "$out" "$@")
array=${array%%;*}  # "id;cluster" on a federation
merge=$(sbatch --parsable --job-name=ddmr-merge --dependency="afterok:$array" \
    --kill-on-invalid-dep=yes --cpus-per-task=1 --mem=1G --output="ddmr-merge-%j.out" \
    "$script" --merge "$out")
merge=${merge%%;*}
echo "submitted array job $array ($tasks tasks of $cpus CPU(s)) and merge job $merge" \
    "(after the array ends well): $out/batch.csv"
