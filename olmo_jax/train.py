"""`python -m olmo_jax.train --config configs/train.py:150M --workdir runs/150M`.

Composes config, data, model, trainer, checkpoints and in-loop evaluation. Restarting on a
workdir that holds checkpoints resumes from the newest complete one.

Flags of the PyTorch pipeline work too: --model_size 150M (= --config.model.size),
--data_path DIR (= --config.data.data_dir), --output_dir DIR (= --workdir), and
--config_file FILE: a full config (as --config), a YAML file of overrides such as
configs/training_configs/default_training.yaml, or a one-section file such as
configs/training_configs/default_training.py. --verbosity=0 shows library INFO logs.
One trainer per workdir (a lock); exit 0 done, 2 bad input or busy workdir, 1 failed run,
3 a step that does not fit the devices (a run stops before allocating; a --dry_run still
prints and writes its plan).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import ml_collections

from olmo_jax import runtime

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU

from olmo_jax import cli, console, distributed, paths, plan_options
from olmo_jax import config as config_lib
from olmo_jax import hooks as hooks_lib
from olmo_jax import plan as plan_lib
from olmo_jax import workdir as workdir_lib
from olmo_jax.cli import translate_aliases  # noqa: F401  (public name)

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "train.py")


def run(config: ml_collections.ConfigDict, workdir: str | None, *,
        print_fn=print, extra_callbacks=(), dry_run: bool = False) -> Any:
  """Trains (or resumes) per `config` in `workdir`; returns the trainer's LoopResult.

  extra_callbacks: olmo_jax.hooks.Hook objects, or plain `fn(step, state) -> metrics | None`
  called after every step (in-loop evaluation, orchestration).
  dry_run: print the ahead-of-time plan (memory per device, FLOPs, tokens/s) and return it.
  """
  if dry_run:
    config = plan_lib.for_target(config)
  cfg, data = build_config(config)
  plan_options.check_options(cfg)  # plan.output, hosts, ... named before anything compiles
  import jax
  say = print_fn if jax.process_index() == 0 else (lambda line: None)
  from data_pipeline import mixture
  schedule, tx = build_optimizer(cfg)
  step_cfg = build_step_config(cfg, schedule)
  if dry_run:
    return plan_lib.dry_run(cfg, config_lib.model_config(cfg), tx, step_cfg, print_fn=print_fn)
  say(mixture.describe(data))  # the sources and tokens this run trains on
  check_workdir(cfg, workdir, say)  # before anything is compiled or written
  mesh = build_mesh(cfg)
  abstract, shard = build_layout(cfg, mesh, tx)
  # Compiled once, before anything is allocated or written: stops here when it cannot fit.
  train_step = build_step(cfg, mesh, tx, step_cfg, abstract, shard, print_fn)
  write_run_config(cfg, workdir, mesh, say)
  checkpointer = build_checkpointer(cfg, workdir)
  state, data_state = build_state(cfg, mesh, tx, abstract, shard, checkpointer, workdir, say)
  data_iter = build_data(cfg, data, data_state)
  policy = step_cfg.policy
  hooks = build_hooks(cfg, data, mesh, checkpointer, data_iter, extra_callbacks)
  logger, log_hook = build_logging(cfg, mesh, workdir)
  try:
    result = _train(cfg, mesh, state, train_step, policy, data_iter, [*hooks, log_hook],
                    print_fn)
  except BaseException:
    if checkpointer is not None:
      checkpointer.close()  # reports (never raises) a failed save: the first error wins
    raise
  finally:
    logger.close()
  if checkpointer is not None:
    checkpointer.wait()  # a failed final save is an error of the run
    checkpointer.close()
  return result


def build_config(config: ml_collections.ConfigDict):
  """(the resolved, validated config, its data plan); JAX is set up here (before its first
  use). The data config is resolved here once; everything downstream takes the plan."""
  cfg = config_lib.resolve(config)
  from olmo_jax import hostmem
  hostmem.keep_freed_memory()  # CPU only; must precede the first use of a JAX backend
  import jax  # after flags: XLA flags and platform choice are read on first use

  from data_pipeline import mixture
  config_lib.validate(cfg, jax.process_count())
  data = mixture.resolve(cfg.data)
  mixture.validate_config(data, cfg.model.vocab_size)
  if cfg.eval.every > 0 and not cfg.eval.tasks and not has_heldout_split(data):
    raise ValueError("eval.every > 0 reads the held-out split of each source, and "
                     "data.heldout_fraction is 0; set it (e.g. 0.01), name eval.tasks, "
                     "or set eval.every=0")
  if cfg.eval.tasks:
    from eval import tasks as tasks_lib  # the entry point may import eval; the library not
    tasks_lib.resolve_tasks(cfg.eval.tasks)  # an unknown name fails here, listing the known
    if cfg.eval.every <= 0 or cfg.eval.limit < 0:
      raise ValueError(f"eval.tasks={cfg.eval.tasks!r} needs eval.every > 0 (steps between "
                       "evaluations) and eval.limit >= 0")
  return cfg, data


def has_heldout_split(data) -> bool:
  """Whether the in-loop loss has held-out data (a DataPlan): the data's split, or the
  synthetic stream."""
  return data.synthetic or data.holds_out


def build_mesh(cfg):
  """The device mesh; the microbatch must split evenly over its batch shards."""
  from olmo_jax import sharding
  t = cfg.train
  mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.microbatch_size % batch_shards:
    # The microbatch is the batch unless train.microbatch_size was set: name what was set.
    field, n = (("batch_size", t.batch_size) if t.microbatch_size == t.batch_size
                else ("microbatch_size", t.microbatch_size))
    raise ValueError(f"train.{field}={n} must be divisible by the {batch_shards} batch shards "
                     f"of the mesh (mesh.data * mesh.fsdp over {mesh.devices.size} devices); "
                     f"set --config.train.{field} to a multiple of {batch_shards}")
  return mesh


def build_optimizer(cfg):
  """(learning-rate schedule, optimizer): the schedule is built once, used by both."""
  from olmo_jax import optim
  t = cfg.train
  schedule = optim.make_schedule(t.lr, t.warmup_steps, t.steps, t.min_lr_ratio)
  tx = optim.make_optimizer(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                            grad_clip=t.grad_clip, weight_decay_mask_mode=t.weight_decay_mask)
  return schedule, tx


def check_workdir(cfg, workdir: str | None, say) -> None:
  """Guards run before anything is written to the workdir.

  Resume only into the same run (restart_guard.check_same_run against the newest complete
  checkpoint's config), and never start fresh over damaged checkpoints unless
  checkpoint.start_fresh_if_damaged.
  """
  if not (workdir and cfg.checkpoint.enabled):
    return
  from olmo_jax import checkpoint, restart_guard
  ckpt_dir = os.path.join(paths.abspath(workdir), "checkpoints")
  steps = checkpoint.complete_steps(ckpt_dir, kind=checkpoint.KIND_STATE, quiet=True)
  if steps:
    restart_guard.check_same_run(ckpt_dir, steps[-1], config_lib.to_dict(cfg),
                          allow=cfg.checkpoint.allow_config_change, say=say)
  else:
    restart_guard.check_not_all_damaged(ckpt_dir, cfg.checkpoint.start_fresh_if_damaged)


def write_run_config(cfg, workdir: str | None, mesh, say) -> None:
  """config.json in the workdir (process 0) and the one-line summary of the run."""
  import jax
  if workdir and jax.process_index() == 0:
    paths.makedirs(workdir)
    config_lib.save_json(cfg, os.path.join(workdir, "config.json"))
  d, t = cfg.derived, cfg.train
  say(f"model {cfg.model.size} ({cfg.model.variant}): N={d.non_embedding_params:,} "
      f"non-embedding params, {t.steps:,} steps x {d.tokens_per_step:,} tokens, "
      f"C={d.compute_flops:.3e} FLOPs; mesh {dict(mesh.shape)}, dtype {cfg.model.dtype}, "
      f"{t.batch_size // t.microbatch_size} microbatch(es)")


def build_checkpointer(cfg, workdir: str | None):
  """The workdir's Checkpointer (None without a workdir or with checkpoints disabled)."""
  if not (workdir and cfg.checkpoint.enabled):
    return None
  from data_pipeline import tokenizer as tok
  from olmo_jax import checkpoint
  try:
    tok_hash = tok.tokenizer_hash(getattr(cfg.data, "tokenizer", "olmo"))
  except FileNotFoundError:
    tok_hash = None
  c = cfg.checkpoint
  return checkpoint.Checkpointer(
      os.path.join(workdir, "checkpoints"), every=c.every, keep=c.keep,
      keep_period=c.keep_period, async_save=c.async_save,
      metadata={"config": config_lib.to_dict(cfg), "tokenizer_hash": tok_hash})


def build_layout(cfg, mesh, tx):
  """(abstract train state with shardings, shardings) of this config on this mesh."""
  from olmo_jax import trainer
  mcfg = config_lib.model_config(cfg)
  return trainer.state_shardings(mesh, mcfg, tx, mcfg.dtype == "float16")


def build_state(cfg, mesh, tx, abstract, shard, checkpointer, workdir, say):
  """(train state, data iterator state or None): resumed from the newest intact checkpoint,
  else started from a params-only checkpoint in the workdir, else freshly initialised."""
  from olmo_jax import checkpoint, restart_guard, trainer
  restored = None
  if checkpointer is not None and checkpointer.latest_step() is not None:
    try:
      restored = checkpointer.restore(abstract)
    except checkpoint.CheckpointError as e:  # every complete-looking step failed to restore
      why = "; ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
      restart_guard.refuse_fresh_start(checkpointer.directory, why,
                                       cfg.checkpoint.start_fresh_if_damaged)
  if checkpointer is not None and restored is None:
    # Nothing to resume: damaged steps go aside, never away.
    checkpointer.set_aside_newer(-1, checkpointer.failed_restores)
  if restored is not None:
    state, data_state, step = restored
    say(f"resumed from {workdir}/checkpoints at step {step}")
  else:
    init_from = None
    if checkpointer is not None:
      init_from = checkpoint.load_init_params(workdir, abstract["params"])
    mcfg, t = config_lib.model_config(cfg), cfg.train
    loss_scale = t.loss_scale if mcfg.dtype == "float16" else None
    state = trainer.init_state(mesh, mcfg, tx, t.seed, loss_scale, params=init_from,
                               shard=shard)
    data_state = None
    if init_from is not None:
      say(f"initialised params from the checkpoint in {workdir} (fresh optimizer state)")
  if checkpointer is not None:
    checkpointer.prepare(state)  # CPU: staging buffers for async saves, off the first save
  return state, data_state


def data_seed(cfg) -> int:
  return cfg.train.seed if cfg.data.seed == -1 else cfg.data.seed


def build_data(cfg, data, data_state=None):
  """This process's training batch iterator over the data plan, at `data_state` when
  resuming."""
  import jax

  from data_pipeline import mixture
  t = cfg.train
  pc, pi = jax.process_count(), jax.process_index()
  data_iter = mixture.build_train_iterator(
      data, seq_len=t.seq_len, batch_size=t.batch_size // pc, seed=data_seed(cfg),
      vocab_size=cfg.model.vocab_size, process_index=pi, process_count=pc)
  if data_state is not None:
    data_iter.set_state(data_state)
  return data_iter


def build_step_config(cfg, schedule):
  """The StepConfig (microbatches, loss, UpdatePolicy, lr schedule) of a resolved config."""
  from olmo_jax import trainer
  t, mcfg = cfg.train, config_lib.model_config(cfg)
  policy = trainer.UpdatePolicy(nonfinite=t.nan_policy, loss_scaling=mcfg.dtype == "float16",
                               initial_scale=t.loss_scale)
  return trainer.StepConfig(
      microbatches=t.batch_size // t.microbatch_size, z_loss=t.z_loss,
      loss_chunk_tokens=(0 if t.loss_impl == "dense"
                         else t.loss_chunk_tokens or trainer.default_loss_chunk(mcfg.platform)),
      policy=policy, lr_schedule=schedule)


def build_step(cfg, mesh, tx, step_cfg, abstract, shard, print_fn=print):
  """The jitted train step, compiled ahead of time against the plan (olmo_jax/plan.py): a
  step that cannot fit the devices stops here, with the settings that would fit."""
  from olmo_jax import plan, trainer
  mcfg = config_lib.model_config(cfg)
  step = trainer.make_train_step(mcfg, tx, step_cfg, mesh, shard)
  return plan.check(cfg, mcfg, tx, step_cfg, mesh, abstract, shard, step, print_fn=print_fn)[0]


def build_hooks(cfg, data, mesh, checkpointer, data_iter, extra_callbacks=()) -> list:
  """The loop's hooks in order: callbacks and evaluation, signals, checkpoints."""
  from olmo_jax import sharding
  hooks = [cb if isinstance(cb, hooks_lib.Hook) else hooks_lib.CallbackHook(cb)
           for cb in extra_callbacks]
  if cfg.eval.every > 0 and has_heldout_split(data):
    hooks.append(build_eval_hook(cfg, data, sharding.batch_sharding(mesh)))
  if cfg.eval.every > 0 and cfg.eval.tasks:
    hooks.append(build_task_eval_hook(cfg, mesh))
  hooks.append(hooks_lib.StopOnSignal())
  if checkpointer is not None:
    hooks.append(hooks_lib.CheckpointHook(checkpointer, data_iter.get_state))
  return hooks


def build_logging(cfg, mesh, workdir):
  """(metrics logger, the hook that writes to it every train.log_every steps)."""
  import jax

  from olmo_jax import sizes, trainer
  t, d, mcfg = cfg.train, cfg.derived, config_lib.model_config(cfg)
  first = jax.process_index() == 0
  # A bucket cannot append: metrics and TensorBoard events go to its local mirror.
  logger = console.MetricsLogger(paths.mirror(workdir) if workdir and first else workdir,
                                 enabled=first)
  hook = hooks_lib.LogHook(
      t.log_every, tokens_per_step=d.tokens_per_step, logger=logger,
      flops_per_token=sizes.flops_per_token(mcfg.d_model, mcfg.n_layers, t.seq_len,
                                            d.non_embedding_params),
      peak_flops=t.peak_flops_per_device or trainer.device_peak_flops())
  return logger, hook


def _train(cfg, mesh, state, train_step, policy, data_iter, hooks, print_fn):
  from olmo_jax import sharding, trainer
  batch_sh = sharding.batch_sharding(mesh)
  batches = (trainer.put_batch(b, batch_sh) for b in data_iter)
  return trainer.train_loop(state, train_step, batches, total_steps=cfg.train.steps,
                            hooks=hooks, policy=policy, progress_bar=cfg.train.progress_bar,
                            print_fn=print_fn)


def build_eval_hook(cfg, data, batch_sh):
  """In-loop evaluation every eval.every steps: mean loss on `eval.batches` batches of the
  data's held-out split (another seed of the synthetic stream)."""
  import jax
  import numpy as np

  from data_pipeline import mixture
  from olmo_jax import trainer
  t = cfg.train
  pc, pi = jax.process_count(), jax.process_index()
  batches = [trainer.put_batch(b, batch_sh) for b in mixture.heldout_batches(
      data, cfg.eval.batches, seq_len=t.seq_len, batch_size=t.microbatch_size // pc,
      seed=data_seed(cfg), vocab_size=cfg.model.vocab_size, process_index=pi, process_count=pc)]
  eval_step = trainer.make_eval_step(config_lib.model_config(cfg))

  def held_out_loss(step, state):
    losses = [eval_step(state["params"], b) for b in batches]
    return {"eval_loss": float(np.mean(jax.device_get(losses)))}

  return hooks_lib.CallbackHook(held_out_loss, every=cfg.eval.every)


def build_task_eval_hook(cfg, mesh):
  """In-loop task evaluation (eval/inloop.py) every eval.every steps: the tasks' primary
  metrics and suite macro averages, logged as eval/<task>/<metric> and eval/<suite>."""
  from eval import inloop
  callback = inloop.make_eval_callback(
      cfg.eval.tasks, cfg.eval.every, config_lib.model_config(cfg),
      limit=cfg.eval.limit or None, max_length=cfg.train.seq_len,
      tokenizer=cfg.data.get("tokenizer", "olmo") or "olmo", mesh=mesh)
  return hooks_lib.CallbackHook(callback, every=cfg.eval.every)


def parse_flags(argv: list[str]):
  """absl FLAGS of the command line (aliases translated); raises ValueError / flags.Error."""
  from absl import app, flags
  from ml_collections import config_flags
  app.define_help_flags()
  config, rest = cli.load_config(translate_aliases(argv), f"{DEFAULT_CONFIG}:4M")
  # The overrides are read from `rest`, not sys.argv (which still holds the aliases).
  config_flags.DEFINE_config_dict("config", config, "The training config: --config FILE[:ARG] "
                                  "picks the file, --config.<field>=<value> overrides.",
                                  sys_argv=rest)
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
  flags.DEFINE_bool("dry_run", False, "Print the plan (memory per device, FLOPs, tokens/s) "
                    "from the compiled train step, without training.")
  distributed.define_flags()
  extra = flags.FLAGS(rest)[1:]
  if extra:
    raise ValueError(f"unexpected argument {extra[0]!r} (flags take --name=value)")
  return flags.FLAGS


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: exit 0 done, 2 bad input or a busy workdir, 1 a failure of the run,
  3 a train step that does not fit the devices (plan.EXIT_DOES_NOT_FIT), --dry_run too."""
  from absl import flags
  try:
    FLAGS = parse_flags(list(sys.argv if argv is None else argv))
    # The GPU memory the plan counts is the memory the allocator gets: one number.
    plan_options.export_memory_fraction(FLAGS.config)
    # A gs:// workdir: its shape, bucket and endpoint, in seconds, before anything else.
    paths.check_bucket(FLAGS.workdir, "--workdir", write=not FLAGS.dry_run)
    setup = distributed.initialize_from_flags(FLAGS)  # before anything touches a device
  except (ValueError, FileNotFoundError, flags.Error) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  workdir = FLAGS.workdir
  # One trainer per workdir: process 0 of a run holds the lock for all its processes.
  first = distributed.is_first_process(setup)
  lock = workdir_lib.lock_for(workdir) if workdir and not FLAGS.dry_run and first else None
  try:
    took_over = lock.acquire() if lock else None
  except (OSError, workdir_lib.WorkdirBusyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # A dry run writes nothing, not even its log.
  log_file = process_log_file(workdir, setup) if workdir and not FLAGS.dry_run else None
  cli.setup_logging(FLAGS.verbosity if FLAGS["verbosity"].present else None, log_file)
  if took_over:
    logging.warning(took_over)
  try:
    return run_reporting_errors(FLAGS.config, workdir, FLAGS.dry_run, lock, log_file)
  finally:
    paths.sync_mirrors()  # the log, metrics and events of a gs:// workdir, uploaded now
    if lock:
      lock.release()  # a no-op after release_and_tidy


def process_log_file(workdir: str, setup: distributed.Setup) -> str | None:
  """This process's log: <workdir>/train.log for process 0, train.<i>.log for the others.

  Processes start in any order and may not share a disk, so a process other than 0 makes the
  workdir itself rather than wait for process 0 to make it.
  """
  if distributed.is_first_process(setup):
    # Process 0's lock made the workdir; in a bucket the log is written to its mirrored copy.
    return os.path.join(paths.mirror(workdir), cli.LOG_FILE)
  if paths.is_remote(workdir):
    return None  # the other processes of a bucket run log to their terminal only
  import jax
  os.makedirs(workdir, exist_ok=True)
  stem, ext = os.path.splitext(cli.LOG_FILE)
  return os.path.join(workdir, f"{stem}.{jax.process_index()}{ext}")


def run_reporting_errors(config, workdir, dry_run, lock, log_file) -> int:
  """run() with its errors as one `error:` line and an exit code; tracebacks to the log."""
  from olmo_jax.checkpoint import CheckpointError  # after the lock: a busy workdir fails fast
  from olmo_jax.trainer import NonFiniteLossError
  try:
    result = run(config, workdir, dry_run=dry_run)
  except (ValueError, FileNotFoundError, KeyError) as e:  # user-caused: no traceback
    logging.error("bad input", exc_info=True, extra={"file_only": True})
    print(f"error: {e}", file=sys.stderr)
    if lock:  # a workdir this run created, with nothing but its lock and log, goes again
      _remove_unused_run_files(lock, workdir)
      lock.release_and_tidy((cli.LOG_FILE,))
    return plan_lib.EXIT_DOES_NOT_FIT if isinstance(e, plan_lib.PlanError) else 2
  except (NonFiniteLossError, CheckpointError, OSError) as e:
    logging.error("the run failed", exc_info=True, extra={"file_only": True})
    details = f" (details: {log_file})" if log_file else ""
    print(f"error: {e}{details}", file=sys.stderr)
    return 1
  if dry_run and not result.fits:  # `--dry_run && launch` must not go ahead
    print(plan_lib.does_not_fit_line(result), file=sys.stderr)
    return plan_lib.EXIT_DOES_NOT_FIT
  return 0


# What a run writes before its first logged step or checkpoint (see run()).
RUN_FILES, RUN_DIRS = ("config.json", "metrics.jsonl"), ("checkpoints", "tensorboard")


def _remove_unused_run_files(lock, workdir: str) -> None:
  """Removes the run files of a workdir this run created when it stopped before logging or
  saving anything (bad token ids at the first batch, say).

  Only then: metrics or a checkpoint already written stay, with the workdir.
  """
  if not (workdir and lock.created):
    return
  names = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()
  if not names <= {workdir_lib.LOCK_NAME, cli.LOG_FILE, *RUN_FILES, *RUN_DIRS}:
    return  # something else is there: left as it is
  metrics = os.path.join(workdir, "metrics.jsonl")
  ckpts = os.path.join(workdir, "checkpoints")
  if (os.path.exists(metrics) and os.path.getsize(metrics)
      or os.path.isdir(ckpts) and os.listdir(ckpts)):
    return
  import shutil
  for name in names & {*RUN_FILES, *RUN_DIRS}:
    path = os.path.join(workdir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)


if __name__ == "__main__":
  sys.exit(main())
