#!/usr/bin/env bash
# Every GPU check and benchmark in one call (< 8 minutes on one H100/H200).
# Results land in $OUT (or ./gpu_results): train_gpu.jsonl, parity.log, env.txt, suite.log.
# The GPU image has jax/flax/optax/orbax; the rest travels as wheels in .whl/ (see README).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} > "$OUT/env.txt" 2>&1
# 1. Numerics on the GPU: model tests that need no torch (remat/scan invariance, causality).
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_model.py -k "not fsdp" \
  > "$OUT/parity.log" 2>&1
echo "model tests rc=$?" | tee -a "$OUT/suite.log"
# 2. Throughput and MFU, cuDNN flash attention against XLA attention in the same run.
timeout 300 python3 benchmarks/bench_train_gpu.py --sizes 150M 530M 1B --steps 8 \
  --out "$OUT/train_gpu.jsonl" 2>&1 | tee -a "$OUT/suite.log"
echo "bench rc=${PIPESTATUS[0]}" | tee -a "$OUT/suite.log"
# 3. The full `olmes` suite (every document, MMLU's 14k test questions) on a random-init 1B
#    model in bfloat16; target: under 10 minutes on one GPU, compilation included.
timeout 600 python3 benchmarks/bench_eval.py --sizes 1B --full --no-hf --dtype bfloat16 --batch-tokens 32768 \
  2>&1 | tee -a "$OUT/suite.log"
echo "eval olmes 1B rc=${PIPESTATUS[0]}" | tee -a "$OUT/suite.log"
