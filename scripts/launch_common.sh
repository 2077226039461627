# Sourced by launch_distributed.sh and launch_slurm.sh: the one home of what the launchers share
# (which platform, how DATA_DIR and OUTPUT_DIR are read, the training command and its defaults).
source "$(dirname "${BASH_SOURCE[0]}")/xla_gpu_flags.sh"

# olmo_platform: prints gpu or cpu. OLMO_JAX_PLATFORM=gpu|cpu decides; the default 'auto' is
# gpu when nvidia-smi lists a GPU on this node. Exit 2 with an `error:` line on another value.
olmo_platform() {
  local p=${OLMO_JAX_PLATFORM:-auto}
  if [[ "$p" == auto ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
      p=gpu
    else
      p=cpu
    fi
  fi
  if [[ "$p" != gpu && "$p" != cpu ]]; then
    echo "error: OLMO_JAX_PLATFORM=$p must be auto, gpu or cpu" >&2
    return 2
  fi
  echo "$p"
}

# olmo_abs PATH: PATH against the directory the launcher was called (or submitted) from.
olmo_abs() {
  if [[ "$1" == /* || "$1" == gs://* ]]; then echo "$1"; else echo "$PWD/${1#./}"; fi
}

# olmo_train_args SIZE DATA_DIR OUTPUT_DIR [overrides...]: sets the array OLMO_TRAIN_ARGS to
# `-m olmo_jax.train ...` (run from the repository root). DATA_DIR is what the run trains on
# (config.data.data_dir, as --data_path: every token file under it unless an override names a
# recipe); FSDP over all devices unless an override sets the mesh.
olmo_train_args() {
  OLMO_TRAIN_ARGS=(-m olmo_jax.train --config "configs/train.py:$1" --workdir "$3"
                   --config.data.data_dir="$2" --config.mesh.fsdp=-1 "${@:4}")
}
