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
come from scripts/xla_gpu_flags.sh (a value you export wins).
  SIZE        ladder size, e.g. 1B
  DATA_DIR    config.data.data_dir (mixture 'sample' unless an override names one)
  OUTPUT_DIR  run directory on a shared filesystem (all nodes write checkpoints there)

Environment: PYTHON (default python), OLMO_JAX_SRUN_ARGS (extra srun arguments).

Example (4 nodes x 8 H100, 1B on the DCLM baseline mixture):
  sbatch --nodes=4 scripts/launch_slurm.sh 1B /data/datadecide runs/1B-dclm \
    --config.data.mixture=dclm-baseline --config.train.microbatch_size=256
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -lt 3 ]]; then usage >&2; echo "error: expected SIZE DATA_DIR OUTPUT_DIR" >&2; exit 2; fi
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "error: not inside a SLURM job; submit with: sbatch scripts/launch_slurm.sh $*" >&2
  exit 2
fi
SIZE=$1; DATA=$2; OUT=$3; shift 3
# sbatch runs a copy of this script from the spool directory: find the repository from the
# submission directory.
REPO=${OLMO_JAX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
source "$REPO/scripts/xla_gpu_flags.sh"
olmo_gpu_env
CMD="cd '$REPO' && exec ${PYTHON:-python} -m olmo_jax.train --config configs/train.py:$SIZE \
--workdir '$OUT' --config.data.data_dir='$DATA' --config.data.mixture=sample \
--config.mesh.fsdp=-1 $(printf "'%s' " "$@")"
# shellcheck disable=SC2086
srun --kill-on-bad-exit=1 --ntasks-per-node=1 ${OLMO_JAX_SRUN_ARGS:-} bash -c "$CMD"
