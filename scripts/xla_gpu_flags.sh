# Sourced by the launch scripts: the XLA and NCCL settings that matter for FSDP on GPUs.
# Each keeps a value the caller already exported.
olmo_gpu_env() {
  # Overlap FSDP all-gathers / reduce-scatters with compute: the latency-hiding scheduler,
  # collectives combined into fewer, larger transfers, and pipelined parameter gathers.
  local flags="--xla_gpu_enable_latency_hiding_scheduler=true
    --xla_gpu_enable_triton_gemm=false
    --xla_gpu_all_gather_combine_threshold_bytes=134217728
    --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
    --xla_gpu_all_reduce_combine_threshold_bytes=134217728
    --xla_gpu_enable_pipelined_all_gather=true
    --xla_gpu_enable_pipelined_reduce_scatter=true
    --xla_gpu_enable_pipelined_all_reduce=true
    --xla_gpu_enable_while_loop_double_buffering=true"
  export XLA_FLAGS="${XLA_FLAGS:-} $(echo $flags)"
  # XLA's allocator share of each GPU is not set here: the trainer sets
  # XLA_PYTHON_CLIENT_MEM_FRACTION from plan.headroom (the share its plan counts) unless the
  # caller exported one, which the plan then counts instead (olmo_jax/plan_options.py).
  export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
  export NCCL_CROSS_NIC=${NCCL_CROSS_NIC:-0}
  export NCCL_PROTO=${NCCL_PROTO:-Simple}
  export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
  export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
}
