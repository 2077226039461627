"""`python -m olmo_jax.train --config configs/train.py:150M --workdir runs/150M`.

Composes config, data, model, trainer, checkpoints and in-loop evaluation. Restarting on a
workdir that holds checkpoints resumes from the newest complete one.

Aliases for users of the PyTorch pipeline: --model_size 150M, --data_path DIR,
--output_dir DIR (= --workdir), --config_file FILE (= --config FILE).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import ml_collections

from olmo_jax import config as config_lib
from olmo_jax import distributed

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "train.py")


def translate_aliases(argv: Sequence[str]) -> list[str]:
  """Maps the PyTorch pipeline's flags onto ours (both `--f v` and `--f=v` forms)."""
  out, i = [], 0
  simple = {"--output_dir": "--workdir", "--config_file": "--config"}
  overrides = {"--model_size": "--config.model.size", "--data_path": "--config.data.data_dir"}
  argv = list(argv)
  while i < len(argv):
    a = argv[i]
    name, eq, val = a.partition("=")
    if name in simple or name in overrides:
      if not eq:
        if i + 1 >= len(argv):
          raise SystemExit(f"flag {name} needs a value")
        val, i = argv[i + 1], i + 1
      out.append(f"{simple.get(name) or overrides[name]}={val}")
    else:
      out.append(a)
    i += 1
  return out


def run(config: ml_collections.ConfigDict, workdir: str | None, *,
        print_fn=print, extra_callbacks=(), dry_run: bool = False) -> Any:
  """Trains (or resumes) per `config` in `workdir`; returns the trainer's LoopResult.

  dry_run: print the ahead-of-time plan (memory per device, FLOPs, tokens/s) and return it.
  """
  cfg = config_lib.resolve(config)
  from olmo_jax import hostmem
  hostmem.keep_freed_memory()  # CPU only; must precede the first use of a JAX backend
  import jax  # after flags: XLA flags and platform choice are read on first use

  from data_pipeline import mixture
  config_lib.validate(cfg, jax.process_count())
  mixture.validate_config(cfg.data, cfg.model.vocab_size)

  from olmo_jax import optim, plan, sharding, sizes, trainer

  mcfg = config_lib.model_config(cfg)
  t = cfg.train
  micro = t.batch_size // t.microbatch_size
  loss_scaling = mcfg.dtype == "float16"
  tx = optim.make_optimizer(
      peak_lr=t.lr, warmup_steps=t.warmup_steps, total_steps=t.steps,
      min_lr_ratio=t.min_lr_ratio, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
      grad_clip=t.grad_clip, weight_decay_mask_mode=t.weight_decay_mask)
  step_cfg = trainer.StepConfig(
      microbatches=micro, z_loss=t.z_loss, skip_nonfinite=t.nan_policy == "skip",
      loss_scaling=loss_scaling,
      loss_chunk_tokens=(0 if t.loss_impl == "dense"
                         else t.loss_chunk_tokens or trainer.default_loss_chunk()),
      peak_lr=t.lr, warmup_steps=t.warmup_steps,
      total_steps=t.steps, min_lr_ratio=t.min_lr_ratio)
  if dry_run:
    return plan.dry_run(cfg, mcfg, tx, step_cfg, print_fn=print_fn)
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.microbatch_size % batch_shards:
    raise ValueError(f"train.microbatch_size={t.microbatch_size} must be divisible by the "
                     f"{batch_shards} batch shards of the mesh (mesh.data * mesh.fsdp)")
  abstract, shard = trainer.state_shardings(mesh, mcfg, tx, loss_scaling)
  # Compiled once, before anything is allocated: stops here when the step cannot fit.
  train_step = plan.check(cfg, mcfg, tx, step_cfg, mesh, abstract, shard,
                          trainer.make_train_step(mcfg, tx, step_cfg, mesh, shard),
                          print_fn=print_fn)[0]
  is_main = jax.process_index() == 0
  if workdir and is_main:
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_json(cfg, os.path.join(workdir, "config.json"))
  d = cfg.derived
  if is_main:
    print_fn(f"model {cfg.model.size} ({cfg.model.variant}): N={d.non_embedding_params:,} "
             f"non-embedding params, {t.steps:,} steps x {d.tokens_per_step:,} tokens, "
             f"C={d.compute_flops:.3e} FLOPs; mesh {dict(mesh.shape)}, dtype {mcfg.dtype}, "
             f"{micro} microbatch(es)")

  checkpointer, restored = None, None
  if workdir and cfg.checkpoint.enabled:
    from data_pipeline import tokenizer as tok
    from olmo_jax import checkpoint
    try:
      tok_hash = tok.tokenizer_hash(getattr(cfg.data, "tokenizer", "olmo"))
    except FileNotFoundError:
      tok_hash = None
    checkpointer = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"), every=cfg.checkpoint.every,
        keep=cfg.checkpoint.keep, keep_period=cfg.checkpoint.keep_period,
        async_save=cfg.checkpoint.async_save,
        metadata={"config": config_lib.to_dict(cfg), "tokenizer_hash": tok_hash})
    if checkpointer.latest_step() is not None:
      restored = checkpointer.restore(abstract)
  init_from = None
  if restored is None and workdir and cfg.checkpoint.enabled:
    from olmo_jax import checkpoint
    init_from = checkpoint.load_init_params(workdir, abstract["params"])

  seed = t.seed if cfg.data.seed == -1 else cfg.data.seed
  pc, pi = jax.process_count(), jax.process_index()
  data_iter = mixture.build_train_iterator(
      cfg.data, seq_len=t.seq_len, batch_size=t.batch_size // pc, seed=seed,
      vocab_size=cfg.model.vocab_size, process_index=pi, process_count=pc)
  if restored is not None:
    state, data_state, step = restored
    if data_state is not None:
      data_iter.set_state(data_state)
    if is_main:
      print_fn(f"resumed from {workdir}/checkpoints at step {step}")
  else:
    state = trainer.init_state(mesh, mcfg, tx, t.seed, t.loss_scale if loss_scaling else None,
                               params=init_from, shard=shard)
    if init_from is not None and is_main:
      print_fn(f"initialised params from the checkpoint in {workdir} (fresh optimizer state)")

  if checkpointer is not None:
    checkpointer.prepare(state)  # CPU: staging buffers for async saves, off the first save
  batch_sh = sharding.batch_sharding(mesh)
  callbacks = list(extra_callbacks)
  if cfg.eval.every > 0:
    callbacks.append(held_out_loss_callback(cfg, mcfg, batch_sh, seed))
  peak = t.peak_flops_per_device or trainer.device_peak_flops()
  fpt = sizes.flops_per_token(mcfg.d_model, mcfg.n_layers, t.seq_len, d.non_embedding_params)
  logger = trainer.MetricsLogger(workdir, enabled=is_main)
  try:
    result = trainer.train_loop(
        state, train_step, data_iter, total_steps=t.steps, batch_sh=batch_sh,
        tokens_per_step=d.tokens_per_step, flops_per_token=fpt, peak_flops=peak,
        log_every=t.log_every, logger=logger, checkpointer=checkpointer,
        callbacks=tuple(callbacks), nan_policy=t.nan_policy, progress_bar=t.progress_bar,
        get_data_state=data_iter.get_state, print_fn=print_fn)
  except BaseException:
    logger.close()
    if checkpointer is not None:
      checkpointer.close()  # reports (never raises) a failed save: the first error wins
    raise
  logger.close()
  if checkpointer is not None:
    checkpointer.wait()  # a failed final save is an error of the run
    checkpointer.close()
  return result


def held_out_loss_callback(cfg, mcfg, batch_sh, seed):
  """In-loop evaluation: mean loss on `eval.batches` batches of a differently seeded stream."""
  import jax
  import numpy as np

  from data_pipeline import mixture
  from olmo_jax import trainer
  t = cfg.train
  pc, pi = jax.process_count(), jax.process_index()
  it = mixture.build_train_iterator(
      cfg.data, seq_len=t.seq_len, batch_size=t.microbatch_size // pc, seed=seed + 1_000_003,
      vocab_size=cfg.model.vocab_size, process_index=pi, process_count=pc)
  batches = [trainer.put_batch(next(it), batch_sh) for _ in range(cfg.eval.batches)]
  eval_step = trainer.make_eval_step(mcfg)

  def callback(step, state):
    if step % cfg.eval.every:
      return None
    losses = [eval_step(state["params"], b) for b in batches]
    return {"eval_loss": float(np.mean(jax.device_get(losses)))}

  return callback


def main(argv: Sequence[str] | None = None) -> int:
  from absl import app, flags
  from ml_collections import config_flags

  argv = translate_aliases(sys.argv if argv is None else argv)
  config_flags.DEFINE_config_file("config", f"{DEFAULT_CONFIG}:4M",
                                  "Training config file (size as the argument).")
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
  flags.DEFINE_bool("dry_run", False, "Print the plan (memory per device, FLOPs, tokens/s) "
                    "from the compiled train step, without training.")
  distributed.define_flags()
  status = {}

  def _main(_):
    from olmo_jax.checkpoint import CheckpointError
    from olmo_jax.trainer import NonFiniteLossError
    try:
      distributed.initialize_from_flags(flags.FLAGS)  # before anything touches a device
      run(flags.FLAGS.config, flags.FLAGS.workdir, dry_run=flags.FLAGS.dry_run)
    except (ValueError, FileNotFoundError, KeyError) as e:  # user-caused: no traceback
      print(f"error: {e}", file=sys.stderr)
      status["rc"] = 2
      return 2
    except (NonFiniteLossError, CheckpointError) as e:
      print(f"error: {e}", file=sys.stderr)
      status["rc"] = 1
      return 1
    status["rc"] = 0
    return 0

  try:
    app.run(_main, argv=argv)
  except SystemExit as e:
    return int(e.code or 0)
  return status.get("rc", 0)


if __name__ == "__main__":
  sys.exit(main())
