#!/usr/bin/env bash
# A Cloud TPU pod slice: the same training command on every host (worker) of the slice.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/launch_tpu_pod.sh TPU_NAME ZONE SIZE DATA_DIR OUTPUT_DIR [overrides...]

Runs `python -m olmo_jax.train` on every worker of the TPU VM slice TPU_NAME through
`gcloud compute tpus tpu-vm ssh --worker=all`; jax.distributed finds the slice's hosts from
the TPU metadata (olmo_jax/distributed.py), and the mesh spans all chips (FSDP by default).
OUTPUT_DIR is the run directory: a bucket (gs://BUCKET/PATH: checkpoints through Orbax,
config.json, metrics, TensorBoard events and the log; process 0 holds the run's lock object)
or a path every worker sees (NFS/Filestore). DATA_DIR holds token files, which are memory
mapped: a file system path on every worker (NFS, or the bucket mounted with
`gcsfuse --implicit-dirs BUCKET /mnt/BUCKET` at the same path); a gs:// DATA_DIR is refused
at start-up. The repository must be at the same path on every worker (OLMO_JAX_REMOTE_DIR,
default ~/olmo-jax).
  TPU_NAME, ZONE  the slice, e.g. my-v5p-64 us-east5-a
  SIZE            ladder size, e.g. 1B

Environment: OLMO_JAX_REMOTE_DIR, PYTHON (default python3 on the workers), GCLOUD (default
gcloud), GCLOUD_ARGS (extra ssh arguments, e.g. --project=P).

Example:
  scripts/launch_tpu_pod.sh my-v5p-64 us-east5-a 1B /mnt/my-bucket/data gs://my-bucket/runs/1B \
    --config.data.mixture=dolma17
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -lt 5 ]]; then usage >&2; echo "error: expected TPU_NAME ZONE SIZE DATA_DIR OUTPUT_DIR" >&2; exit 2; fi
TPU=$1; ZONE=$2; SIZE=$3; DATA=$4; OUT=$5; shift 5
REMOTE=${OLMO_JAX_REMOTE_DIR:-'~/olmo-jax'}
CMD="cd $REMOTE && ${PYTHON:-python3} -m olmo_jax.train --config configs/train.py:$SIZE \
--workdir '$OUT' --config.data.data_dir='$DATA' --config.data.mixture=sample \
--config.mesh.fsdp=-1 $(printf "'%s' " "$@")"
# shellcheck disable=SC2086
exec "${GCLOUD:-gcloud}" compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all \
  ${GCLOUD_ARGS:-} --command="$CMD"
