#!/usr/bin/env bash
# One node, N devices: python -m olmo_jax.train over all of them (FSDP by default).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/launch_distributed.sh SIZE NUM_DEVICES DATA_DIR OUTPUT_DIR [overrides...]

Trains a ladder size (4M ... 1B) on NUM_DEVICES devices of this node, one JAX process that
drives them all (the mesh is mesh.fsdp=-1 unless an override says otherwise).
  SIZE         ladder size, e.g. 150M (configs/train.py:SIZE)
  NUM_DEVICES  GPUs to use (CUDA_VISIBLE_DEVICES 0..N-1 unless already set)
  DATA_DIR     the data it trains on (config.data.data_dir, as --data_path): every token
               file under it, one source per directory, unless an override names a recipe
               (e.g. --config.data.mixture=sample builds the embedded corpus under DATA_DIR)
  OUTPUT_DIR   the run directory (checkpoints, metrics, config.json); rerun to resume
  overrides    any further flags, e.g. --config.train.steps=1000 --config.data.mixture=dolma17

Environment:
  OLMO_JAX_PLATFORM=cpu   run on NUM_DEVICES fake CPU devices (testing without GPUs); the
                          default 'auto' picks gpu when nvidia-smi lists GPUs, else cpu
  PYTHON                  interpreter (default: python)

Example:
  bash scripts/launch_distributed.sh 150M 8 data runs/150M --config.data.mixture=dolma17
USAGE
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -lt 4 ]]; then usage >&2; echo "error: expected SIZE NUM_DEVICES DATA_DIR OUTPUT_DIR" >&2; exit 2; fi
SIZE=$1; NUM=$2; DATA=$3; OUT=$4; shift 4
if ! [[ "$NUM" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_DEVICES=$NUM must be a positive integer" >&2; exit 2
fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/launch_common.sh"
PLATFORM=$(olmo_platform)
case "$PLATFORM" in
  gpu)
    if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then
      CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((NUM - 1))); export CUDA_VISIBLE_DEVICES
    fi
    olmo_gpu_env ;;
  cpu)
    export JAX_PLATFORMS=cpu
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$NUM" ;;
esac

# DATA_DIR and OUTPUT_DIR are relative to where the script is called, not the repository.
olmo_train_args "$SIZE" "$(olmo_abs "$DATA")" "$(olmo_abs "$OUT")" "$@"
cd "$HERE/.."
exec "${PYTHON:-python}" "${OLMO_TRAIN_ARGS[@]}"
