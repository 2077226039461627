#!/usr/bin/env bash
# Every GPU check and benchmark in one call (< 13 minutes on one H100/H200).
# Results land in $OUT (or ./gpu_results): env.txt, parity.log, train_gpu.jsonl (one row per
# implementation and size, then ours / torch summaries), train_gpu.txt (the table, the peak
# used, the ratios), train_gpu.err (its warnings and errors), plan.log, eval_olmes_1b.txt,
# pack_gpu.txt (packed training, K = 1 up to the largest that fits), suite.log. Worst case by
# the timeouts: 60 + 250 + 40 + 2 x 60 + 120 + 2 x 90 s plus start-up (the
# bench's two sides get 100 s and 140 s, so it writes its files before its own 250 s limit).
# The GPU image has jax/flax/optax/orbax; the rest travels as wheels in .whl/ (see README).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# The XLA/NCCL GPU settings of the launch scripts, so the figures are what a launched run gets.
source scripts/xla_gpu_flags.sh && olmo_gpu_env
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
# 1. Numerics on the GPU: model tests that need no torch (remat/scan invariance, causality).
timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_model.py -k "not fsdp" \
  > "$OUT/parity.log" 2>&1
echo "model tests rc=$?" | tee -a "$OUT/suite.log"
# 2. Tokens/s per device and MFU at sequence 2048, 150M and 1B: ours with cuDNN flash and
#    with XLA attention, then the PyTorch reference (LlamaForCausalLM, bf16 autocast, SDPA
#    flash, torch.compile) in the same call, and the ratio ours / torch. Compilation and 2
#    warm-up steps are not timed; 5 steps are. Each side is stopped at its own limit, keeping
#    the rows it finished.
#    Without a CUDA torch (+ transformers) the reference is skipped, saying so, and ours runs.
REF=--torch
if ! python3 -c "import sys, torch, transformers; sys.exit(not torch.cuda.is_available())" \
    >/dev/null 2>&1; then
  REF=--no-torch
  echo "PyTorch reference skipped: no CUDA build of torch with transformers (see env.txt)" \
    | tee -a "$OUT/suite.log"
fi
timeout 250 python3 benchmarks/bench_train_gpu.py --sizes 150M 1B --attention cudnn xla $REF \
  --steps 5 --warmup 2 --worker_timeout 100 140 --out "$OUT/train_gpu.jsonl" \
  > "$OUT/train_gpu.txt" 2> "$OUT/train_gpu.err"
rc=$?
tail -n 5 "$OUT/train_gpu.err" | tee -a "$OUT/suite.log"
tee -a "$OUT/suite.log" < "$OUT/train_gpu.txt"
echo "bench rc=$rc" | tee -a "$OUT/suite.log"
# 3. The ahead-of-time plan of the 1B step compiled for this GPU (memory per device from XLA,
#    tokens/s at 50% MFU); the 8 x 80 GB plan is analytic and runs anywhere (README).
timeout 40 python3 -m olmo_jax.train --config configs/train.py:1B --dry_run \
  --config.train.microbatch_size=8 > "$OUT/plan.log" 2>&1
echo "plan rc=$?" | tee -a "$OUT/suite.log"
# 7. The compiled plan (JSON, olmo_jax/plan.py) of each size the bench ran, at its per-device
#    batch and remat, appended to plan.log: XLA's bytes per device beside the peak the bench
#    measured (train_gpu.jsonl).
for spec in 150M:16:none 1B:8:dots_saveable; do
  IFS=: read -r size micro remat <<< "$spec"
  timeout 60 python3 -m olmo_jax.train --config "configs/train.py:$size" --dry_run \
    --config.model.dtype=bfloat16 --config.model.remat="$remat" --config.model.attention=xla \
    --config.train.batch_size="$micro" --config.train.microbatch_size="$micro" \
    --config.plan.output="/tmp/plan_$size.json" > /dev/null 2>> "$OUT/plan.log"
  echo "compiled plan $size rc=$?" | tee -a "$OUT/suite.log"
  { echo "== compiled plan $size (bench: micro $micro, remat $remat)"; cat "/tmp/plan_$size.json"; } \
    >> "$OUT/plan.log" 2>&1
done
# 4. Evaluation speed: the `olmes` suite on a random-init 1B model in bfloat16 with our scorer,
#    200 documents per task here (a bounded share of the 8 minutes); FULL_OLMES=1 scores every
#    document (MMLU's 14k test questions included; target: under 10 minutes on one GPU,
#    compilation included) as a separate call.
if [ "${FULL_OLMES:-0}" = 1 ]; then EVAL_ARGS="--full"; EVAL_T=600; else EVAL_ARGS="--limit 200"; EVAL_T=120; fi
timeout "$EVAL_T" python3 benchmarks/bench_eval.py --sizes 1B $EVAL_ARGS --no-hf --dtype bfloat16 \
  --batch-tokens 32768 > "$OUT/eval_olmes_1b.txt" 2>&1
echo "eval olmes 1B ($EVAL_ARGS) rc=$?" | tee -a "$OUT/suite.log"
tail -n 20 "$OUT/eval_olmes_1b.txt" | tee -a "$OUT/suite.log"
# 5. Packed training (olmo_jax/pack.py): tokens/s per replica and in all, and MFU, of the 4M
#    and 20M shapes at 2048 tokens and 8 sequences per replica, for K = 1 (the separate run's
#    step, then a pack of one) and doubling K until the GPU runs out of memory: the largest K
#    that fits is the last row before "out of memory". Each size is stopped at its own limit,
#    keeping the rows it printed.
for size in 4M 20M; do
  timeout 90 python3 benchmarks/bench_pack.py --sizes "$size" --ks 1 --until_oom \
    --seq_len 2048 --batch 8 --steps 3 >> "$OUT/pack_gpu.txt" 2>> "$OUT/pack_gpu.err"
  echo "pack $size rc=$?" | tee -a "$OUT/suite.log"
done
tee -a "$OUT/suite.log" < "$OUT/pack_gpu.txt"
