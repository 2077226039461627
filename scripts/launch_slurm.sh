#!/usr/bin/env bash
# K nodes x 8 GPUs under SLURM: one JAX process per node drives its 8 GPUs; the processes find
# each other through the SLURM variables (olmo_jax/distributed.py). Submit with sbatch.
#SBATCH --job-name=olmo-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: sbatch [--nodes=K] scripts/launch_slurm.sh SIZE DATA_DIR OUTPUT_DIR [overrides...]

One task per node sees the node's 8 GPUs; `srun` starts it on every node and
`python -m olmo_jax.train` joins them with jax.distributed from SLURM_* (coordinator: the
first node; port from the job id, or JAX_COORDINATOR_PORT). FSDP over all K x 8 GPUs unless an
override sets the mesh. The XLA/NCCL settings for overlapping FSDP collectives with compute
come from scripts/xla_gpu_flags.sh (a value you export wins). sbatch options on its command
line override the script's #SBATCH defaults (2 nodes, 1 task and 8 GPUs per node, 24 h), e.g.
--ntasks-per-node=8 --gpus-per-task=1 for one task per GPU. The job log is slurm-JOBID.out in
the directory sbatch was called from (sbatch --output=... moves it).
  SIZE        ladder size, e.g. 1B (configs/train.py:SIZE)
  DATA_DIR    the data it trains on (config.data.data_dir, as --data_path): every token file
              under it, one source per directory, unless an override names a recipe
  OUTPUT_DIR  run directory on a shared filesystem or a bucket (all nodes write checkpoints
              there); resubmit the same command to resume
DATA_DIR and OUTPUT_DIR are relative to the submission directory.

Environment: PYTHON (default python), OLMO_JAX_PLATFORM (auto: gpu when nvidia-smi lists
GPUs on the first node, else cpu, one CPU device per task), OLMO_JAX_SRUN_ARGS (extra srun
arguments), OLMO_JAX_REPO (the repository; default: where the submitted script lives).

Example (4 nodes x 8 H100, 1B on the DCLM baseline mixture):
  sbatch --nodes=4 scripts/launch_slurm.sh 1B /data/datadecide runs/1B-dclm \
    --config.data.mixture=dclm-baseline --config.train.microbatch_size=256
USAGE
}

# The repository: sbatch runs a copy of this script from its spool directory, so it is found
# from the path that was submitted (scontrol's Command), else the submission directory.
repo_dir() {
  if [[ -n "${OLMO_JAX_REPO:-}" ]]; then echo "$OLMO_JAX_REPO"; return; fi
  local cmd
  cmd=$(scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | grep -o 'Command=[^ ]*' || true)
  cmd=${cmd#Command=}
  if [[ "$cmd" == */scripts/launch_slurm.sh && -f "$(dirname "$cmd")/launch_common.sh" ]]; then
    (cd "$(dirname "$cmd")/.." && pwd)
  else
    echo "${SLURM_SUBMIT_DIR:-$PWD}"
  fi
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -lt 3 ]]; then usage >&2; echo "error: expected SIZE DATA_DIR OUTPUT_DIR" >&2; exit 2; fi
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "error: not inside a SLURM job; submit with: sbatch scripts/launch_slurm.sh $*" >&2
  exit 2
fi
SIZE=$1; DATA=$2; OUT=$3; shift 3
REPO=$(repo_dir)
if [[ ! -f "$REPO/scripts/launch_common.sh" ]]; then
  echo "error: $REPO is not the olmo-jax repository; submit scripts/launch_slurm.sh by its" \
       "path in the repository or set OLMO_JAX_REPO" >&2
  exit 2
fi
source "$REPO/scripts/launch_common.sh"
PLATFORM=$(olmo_platform)
if [[ "$PLATFORM" == gpu ]]; then olmo_gpu_env; else export JAX_PLATFORMS=cpu; fi
olmo_train_args "$SIZE" "$(olmo_abs "$DATA")" "$(olmo_abs "$OUT")" "$@"
echo "job $SLURM_JOB_ID: $SLURM_NTASKS task(s) on $SLURM_JOB_NODELIST ($PLATFORM), repository $REPO"
# srun inherits the allocation's tasks (sbatch's --nodes / --ntasks-per-node).
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 --chdir="$REPO" ${OLMO_JAX_SRUN_ARGS:-} "${PYTHON:-python}" \
  "${OLMO_TRAIN_ARGS[@]}"
