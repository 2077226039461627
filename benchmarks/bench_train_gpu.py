"""Training throughput and MFU on one GPU: ours (cuDNN vs XLA attention) against PyTorch.

Ours: the model/trainer library (no data pipeline) in bf16 compute with float32 params,
on random token batches of full sequence length 2048. The PyTorch reference, in the same
call: transformers' LlamaForCausalLM of the same shape (config from olmo_jax.hf, the
ladder's HF class: untied head, no biases, SwiGLU, RoPE, RMSNorm), float32 master weights
under bf16 autocast, SDPA restricted to the flash backend, torch.compile, AdamW (fused on
CUDA) with our hyperparameters and global-norm clipping, same batch and sequence.

Each side runs in its own subprocess of this script (ours first, then torch), so neither
holds the other's GPU memory. Timing excludes compilation and warm-up steps. MFU counts
sizes.flops_per_token (6N + causal attention) against trainer.PEAK_FLOPS for the device;
the peak used is printed. Rows go to --out as JSON lines; the table ends with the ratio
ours / torch in tokens/s per device.

  python benchmarks/bench_train_gpu.py --sizes 150M 1B --out results.jsonl
  python benchmarks/bench_train_gpu.py --device cpu --tiny   # both sides, 2 steps, float32
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

from data_pipeline.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID

# Per-device microbatch (sequences of 2048) and remat preset of ours that fit 80 GB in bf16.
PLAN = {"150M": (16, "none"), "300M": (16, "dots_saveable"), "530M": (16, "dots_saveable"),
        "750M": (8, "dots_saveable"), "1B": (8, "dots_saveable")}
SEQ_LEN = 2048
# --tiny: a custom shape small enough for a CPU test (float32, batch 2 x 32 tokens).
TINY = {"d_model": 64, "n_heads": 4, "n_layers": 2, "vocab_size": 512, "embedding_size": 512}
TINY_BATCH, TINY_SEQ = 2, 32
HYPER = {"peak_lr": 1e-3, "warmup_steps": 10, "total_steps": 1000}  # both sides
SEED = 0
# A name transformers has no mask builder for, mapped to transformers' own SDPA function: no
# [L, L] mask is built and SDPA gets is_causal=True, which the flash backend needs. ("sdpa"
# itself materialises the mask while torch.compile traces on torch < 2.14.)
TORCH_ATTN = "sdpa_causal"


def model_config(size: str, tiny: bool, dtype: str, remat: str = "none",
                 attention: str = "auto"):
  """Our ModelConfig for a ladder size (or the tiny shape), at sequence length SEQ_LEN."""
  from olmo_jax import model as M
  from olmo_jax import sizes
  if tiny:
    return M.ModelConfig(**TINY, max_seq_len=TINY_SEQ, dtype=dtype, remat=remat,
                         attention=attention)
  s = sizes.get_size(size)
  return M.ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers,
                       max_seq_len=SEQ_LEN, dtype=dtype, remat=remat, attention=attention)


def shape_of(size: str, tiny: bool) -> tuple[int, int]:
  """(sequences per device, sequence length)."""
  return (TINY_BATCH, TINY_SEQ) if tiny else (PLAN[size][0], SEQ_LEN)


def tokens(n: int, seq_len: int, vocab: int):
  """The same random [n, seq_len + 1] int32 batch on both sides."""
  import numpy as np
  return np.random.default_rng(SEED).integers(0, vocab, (n, seq_len + 1), dtype=np.int32)


def mfu_fields(cfg, seq_len: int, tokens_per_s_per_device: float, device_kind: str) -> dict:
  """MFU of a row from the project's FLOP count and peak table (None: no known peak)."""
  from olmo_jax import sizes, trainer
  n = sizes.non_embedding_params(cfg.d_model, cfg.n_layers, cfg.variant, cfg.embedding_size,
                                 cfg.mlp_hidden)
  fpt = sizes.flops_per_token(cfg.d_model, cfg.n_layers, seq_len, n)
  key, peak = trainer.peak_flops_entry(device_kind)
  return {"params_n": n, "flops_per_token": fpt, "peak_key": key or None,
          "peak_flops": peak or None,
          "mfu": tokens_per_s_per_device * fpt / peak if peak else None}


def timed(step, first, steps: int, warmup: int, sync) -> tuple[float, float, float]:
  """(compile s, s per step, first loss): step 1 compiles, warm-up untimed, then `steps`."""
  t0 = time.perf_counter()
  loss0 = float(first())
  compile_s = time.perf_counter() - t0
  out = None
  for _ in range(warmup):
    out = step()
  sync(out)
  t0 = time.perf_counter()
  out = None
  for _ in range(steps):
    out = step()
  sync(out)
  return compile_s, (time.perf_counter() - t0) / max(steps, 1), loss0


# ------------------------------------------------------------------------------- ours


def run_ours(a, rows_path: str) -> None:
  import jax

  from olmo_jax import optim, sharding, trainer
  if a.device == "gpu" and jax.default_backend() != "gpu":
    print(f"error: --device gpu but JAX sees no GPU (backend {jax.default_backend()!r}, "
          f"devices {jax.devices()}); install jax[cuda12] or use --device cpu", file=sys.stderr)
    sys.exit(2)
  dev = jax.devices()[0]
  box = {}  # the live train state, emptied between configurations
  for size in a.sizes:
    remat = "none" if a.tiny else PLAN[size][1]
    micro, seq_len = shape_of(size, a.tiny)
    for attn in a.attention:
      row = {"impl": "olmo_jax", "size": size, "attention": attn, "remat": remat,
             "dtype": a.dtype, "device": dev.device_kind, "n_devices": jax.device_count()}
      try:
        cfg = model_config(size, a.tiny, a.dtype, remat, attn)
        tx = optim.make_optimizer(**HYPER)
        mesh = sharding.make_mesh()
        step_cfg = trainer.StepConfig(loss_chunk_tokens=trainer.default_loss_chunk())
        box["state"], step_fn = trainer.setup(cfg, tx, step_cfg, mesh, seed=SEED)
        n = jax.device_count() * micro
        batch = trainer.put_batch({"input_ids": tokens(n, seq_len, cfg.vocab_size)},
                                  sharding.batch_sharding(mesh))

        def step():
          box["state"], m = step_fn(box["state"], batch)
          return m

        compile_s, dt, loss0 = timed(step, lambda: step()["loss"], a.steps, a.warmup,
                                     jax.block_until_ready)
        tps = n * seq_len / dt / jax.device_count()
        mem = dev.memory_stats() or {}
        row.update(batch_per_device=micro, seq_len=seq_len, step_s=dt,
                   tokens_per_s_per_device=tps, compile_s=compile_s, first_loss=loss0,
                   peak_mem_gb=mem.get("peak_bytes_in_use", 0) / 2**30,
                   **mfu_fields(cfg, seq_len, tps, dev.device_kind))
      except Exception as e:  # an unsupported kernel must not hide the other rows
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
      box.clear()  # the next configuration gets the whole device memory
      _append(rows_path, row)


# ------------------------------------------------------------------------------ torch


def _check_torch(device: str) -> str | None:
  """A one-line reason the torch side cannot run on `device`, or None."""
  try:
    import torch
    import transformers  # noqa: F401
  except ImportError as e:
    return f"the PyTorch reference needs torch and transformers ({e}); pip install them"
  if device == "gpu" and not torch.cuda.is_available():
    return (f"--device gpu but torch {torch.__version__} has no CUDA device "
            f"(torch.version.cuda={torch.version.cuda}); install a CUDA build of torch")
  return None


def torch_model(cfg, device: str, same_init: bool):
  """transformers LlamaForCausalLM of cfg's shape in float32 (optionally our initial weights)."""
  import torch
  import transformers
  from transformers.integrations.sdpa_attention import sdpa_attention_forward

  from olmo_jax import hf
  transformers.AttentionInterface.register(TORCH_ATTN, sdpa_attention_forward)
  # Special token ids only matter to generation; the tiny vocab lacks OLMo's.
  hf_cfg = transformers.LlamaConfig(**hf.hf_config_dict(
      cfg, "float32", eos_token_id=min(EOS_TOKEN_ID, cfg.vocab_size - 1),
      pad_token_id=min(PAD_TOKEN_ID, cfg.vocab_size - 1)))
  torch.manual_seed(SEED)
  with torch.device(device):
    model = transformers.LlamaForCausalLM._from_config(hf_cfg, attn_implementation=TORCH_ATTN)
  if next(model.parameters()).dtype != torch.float32:  # master weights; autocast does bf16
    model = model.float()
  if same_init:  # our initial params, exported through the project's HF mapping
    import jax

    from olmo_jax import optim, sharding, trainer
    assert jax.default_backend() == "cpu"  # _side runs this process with JAX_PLATFORMS=cpu
    # The jitted init ours runs (trainer.setup), so the weights are the same to the bit.
    params = trainer.init_state(sharding.make_mesh(), cfg, optim.make_optimizer(**HYPER),
                                SEED)["params"]
    state = {k: torch.from_numpy(v) for k, v in hf.hf_state_dict(cfg, params)}
    model.load_state_dict(state, strict=True)
  return model.train()


def _torch_row(a, size: str, dev, kind: str) -> dict:
  """Builds and times the reference for one size; its model dies with this frame."""
  import torch
  import torch.nn.functional as F
  from torch.nn.attention import SDPBackend, sdpa_kernel

  from olmo_jax import optim
  micro, seq_len = shape_of(size, a.tiny)
  cfg = model_config(size, a.tiny, a.dtype)
  model = torch_model(cfg, dev.type, a.same_init)
  opt = torch.optim.AdamW(model.parameters(), lr=HYPER["peak_lr"], betas=(0.9, 0.95),
                          eps=1e-8, weight_decay=0.05, fused=dev.type == "cuda")
  ids = torch.from_numpy(tokens(micro, seq_len, cfg.vocab_size)).long().to(dev)
  inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
  bf16 = a.dtype == "bfloat16"

  def loss_fn(x, y):
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
      logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

  fwd = torch.compile(loss_fn) if a.torch_compile else loss_fn
  # Our schedule's lr of each update (the first update uses count 0), computed before timing.
  schedule = optim.make_schedule(HYPER["peak_lr"], HYPER["warmup_steps"], HYPER["total_steps"])
  lrs = iter([float(schedule(i)) for i in range(1 + a.warmup + a.steps)])

  def step():
    lr = next(lrs)
    for g in opt.param_groups:
      g["lr"] = lr
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # fail rather than fall back
      loss = fwd(inputs, targets)
      loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  def sync(out):
    if dev.type == "cuda":
      torch.cuda.synchronize()
    elif out is not None:
      out.item()

  if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
  compile_s, dt, loss0 = timed(step, step, a.steps, a.warmup, sync)
  tps = micro * seq_len / dt
  return dict(batch_per_device=micro, seq_len=seq_len, step_s=dt,
              tokens_per_s_per_device=tps, compile_s=compile_s, first_loss=loss0,
              peak_mem_gb=(torch.cuda.max_memory_allocated() / 2**30
                           if dev.type == "cuda" else 0.0),
              **mfu_fields(cfg, seq_len, tps, kind))


def run_torch(a, rows_path: str) -> None:
  import torch
  reason = _check_torch(a.device)
  if reason:
    print(f"error: {reason}", file=sys.stderr)
    sys.exit(2)
  dev = torch.device("cuda" if a.device == "gpu" else "cpu")
  kind = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
  for size in a.sizes:
    row = {"impl": "torch", "size": size, "attention": "sdpa_flash", "dtype": a.dtype,
           "device": kind, "n_devices": 1, "torch": torch.__version__,
           "compiled": a.torch_compile}
    try:
      row.update(_torch_row(a, size, dev, kind))
    except Exception as e:
      row["error"] = f"{type(e).__name__}: {e}"[:500]
      traceback.print_exc()
    # The next size gets the whole device memory: drop the compiled graphs holding the model.
    torch._dynamo.reset()
    gc.collect()
    if dev.type == "cuda":
      torch.cuda.empty_cache()
    _append(rows_path, row)


# ---------------------------------------------------------------------------- driver


def _append(path: str, row: dict) -> None:
  with open(path, "a") as f:  # row by row: a timeout keeps the finished rows
    f.write(json.dumps(row) + "\n")


def _side(a, side: str, rows_path: str, timeout: float | None) -> tuple[int, str]:
  """Runs one side in a fresh subprocess of this script: (exit code, one-line failure or "").

  Its stderr passes through (warnings, tracebacks of failed rows) for the log.
  """
  cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--rows", rows_path,
         "--device", a.device, "--sizes", *a.sizes, "--attention", *a.attention,
         "--steps", str(a.steps), "--warmup", str(a.warmup), "--dtype", a.dtype,
         "--torch_compile" if a.torch_compile else "--no-torch_compile",
         "--same_init" if a.same_init else "--no-same_init"] + (["--tiny"] if a.tiny else [])
  env = dict(os.environ)
  if side == "torch":
    env["JAX_PLATFORMS"] = "cpu"  # JAX there only builds configs (and --same_init params)
  elif a.device == "cpu":
    env.setdefault("JAX_PLATFORMS", "cpu")
  try:
    p = subprocess.run(cmd, env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    return 1, f"{side} side ran past its --worker_timeout of {timeout:g} s (rows so far kept)"
  return p.returncode, f"{side} side exited {p.returncode} (its error is above)" * bool(
      p.returncode)


def _fmt(v, spec: str, none: str = "-") -> str:
  return none if v is None else format(v, spec)


def report(rows: list[dict]) -> list[dict]:
  """Prints the table and peaks; returns one summary row per size with the ratios."""
  if not rows:
    print("no results")
    return []
  print(f"{'impl':>9} {'size':>5} {'attention':>10} {'batch':>5} {'step s':>8} "
        f"{'tok/s/dev':>11} {'MFU':>6} {'compile s':>9} {'loss1':>8} {'mem GB':>7}")
  for r in rows:
    if "error" in r:
      print(f"{r['impl']:>9} {r['size']:>5} {r['attention']:>10} failed: {r['error'][:200]}")
      continue
    mfu = _fmt(r["mfu"] and 100 * r["mfu"], ">5.1f")
    print(f"{r['impl']:>9} {r['size']:>5} {r['attention']:>10} {r['batch_per_device']:>5} "
          f"{r['step_s']:>8.4f} {r['tokens_per_s_per_device']:>11,.0f} {mfu:>5}% "
          f"{r['compile_s']:>9.1f} {r['first_loss']:>8.4f} {r['peak_mem_gb']:>7.1f}")
  for kind, r in {r["device"]: r for r in rows if "error" not in r}.items():
    if r["peak_flops"]:
      print(f"peak used for {kind!r}: trainer.PEAK_FLOPS[{r['peak_key']!r}] = "
            f"{r['peak_flops'] / 1e12:.0f} TFLOP/s dense bf16")
    else:
      print(f"no dense bf16 peak known for {kind!r} (trainer.PEAK_FLOPS): MFU not computed")
  summary = []
  for size in dict.fromkeys(r["size"] for r in rows):
    ok = [r for r in rows if r["size"] == size and "error" not in r]
    ref = next((r for r in ok if r["impl"] == "torch"), None)
    for r in ok:
      if r["impl"] != "olmo_jax" or ref is None:
        continue
      s = {"summary": True, "size": size, "attention": r["attention"],
           "ours_tokens_per_s_per_device": r["tokens_per_s_per_device"],
           "torch_tokens_per_s_per_device": ref["tokens_per_s_per_device"],
           "ratio_ours_over_torch": r["tokens_per_s_per_device"] / ref["tokens_per_s_per_device"],
           "ours_mfu": r["mfu"], "torch_mfu": ref["mfu"],
           "first_loss_diff": abs(r["first_loss"] - ref["first_loss"])}
      summary.append(s)
      print(f"{size}: ours ({r['attention']}) / torch = {s['ratio_ours_over_torch']:.2f}x "
            f"tokens/s per device; MFU {_fmt(s['ours_mfu'] and 100 * s['ours_mfu'], '.1f')}% "
            f"vs {_fmt(s['torch_mfu'] and 100 * s['torch_mfu'], '.1f')}%; first-step loss "
            f"{r['first_loss']:.5f} vs {ref['first_loss']:.5f}")
  return summary


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", nargs="+", default=["150M", "1B"])
  p.add_argument("--attention", nargs="+", default=["cudnn", "xla"],
                 help="our attention kernels to time (model.attention)")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 5; --tiny 2)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed steps after the compiling first step (default 2; --tiny 0)")
  p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
  p.add_argument("--tiny", action="store_true",
                 help=f"a tiny custom shape {TINY}, batch {TINY_BATCH} x {TINY_SEQ}")
  p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                 help="compute dtype, params float32 (default bfloat16; --tiny float32)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                 help="run the PyTorch reference")
  p.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--same_init", action=argparse.BooleanOptionalAction, default=None,
                 help="load our initial weights into the torch model (default: with --tiny; "
                      "otherwise torch initialises with our init_std)")
  p.add_argument("--worker_timeout", type=float, nargs="+", default=None,
                 metavar="SECONDS", help="how long each side may run before it is stopped: "
                 "one value for both, or ours then torch")
  p.add_argument("--out", default="", help="JSON lines: every row, then one summary per size")
  p.add_argument("--side", choices=["ours", "torch"], help=argparse.SUPPRESS)
  p.add_argument("--rows", help=argparse.SUPPRESS)
  return p


def main(argv=None) -> int:
  p = _parser()
  a = p.parse_args(argv)
  a.steps = (2 if a.tiny else 5) if a.steps is None else a.steps
  a.warmup = (0 if a.tiny else 2) if a.warmup is None else a.warmup
  a.dtype = a.dtype or ("float32" if a.tiny else "bfloat16")
  a.same_init = a.tiny if a.same_init is None else a.same_init
  if a.device == "cpu" and a.attention == ["cudnn", "xla"]:
    a.attention = ["auto"]
  if a.steps < 1 or a.warmup < 0:
    p.error("--steps must be >= 1 and --warmup >= 0")
  if a.worker_timeout and (len(a.worker_timeout) > 2 or min(a.worker_timeout) <= 0):
    p.error("--worker_timeout takes one or two positive numbers of seconds (ours, torch)")
  if not a.tiny and (bad := [s for s in a.sizes if s not in PLAN]):
    p.error(f"--sizes {' '.join(bad)}: no benchmark plan; choose from {', '.join(PLAN)} "
            "or use --tiny")
  if a.tiny:
    a.sizes = ["tiny"]
  if a.side:
    (run_ours if a.side == "ours" else run_torch)(a, a.rows)
    return 0
  codes = []
  if a.torch and (reason := _check_torch(a.device)):  # before any expensive work
    print(f"error: {reason}", file=sys.stderr)
    return 2
  with tempfile.TemporaryDirectory() as tmp:
    rows_path = os.path.join(tmp, "rows.jsonl")
    limits = a.worker_timeout or [None]
    for i, side in enumerate(["ours"] + (["torch"] if a.torch else [])):
      code, err = _side(a, side, rows_path, limits[min(i, len(limits) - 1)])
      codes.append(code)
      if err:
        print(f"error: {err}", file=sys.stderr, flush=True)
    rows = []
    if os.path.exists(rows_path):
      with open(rows_path) as f:
        rows = [json.loads(line) for line in f]
  summary = report(rows)
  if a.out:
    with open(a.out, "w") as f:
      for r in rows + summary:
        f.write(json.dumps(r) + "\n")
  if 2 in codes:  # a side found no usable device: the environment, named above
    return 2
  return 1 if any(codes) or not rows or any("error" in r for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
