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

from data_pipeline import data_plan, heldout, materialize
from olmo_jax import (
  cli,
  config_files,
  console,
  distributed,
  locking,
  paths,
  plan_compile,
  plan_options,
)
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
    config = plan_compile.for_target(config)
  spec, data = build_config(config)
  plan_options.check_options(spec)  # plan.output, the allocator's share, named before compiling
  import jax
  say = print_fn if jax.process_index() == 0 else (lambda line: None)
  if dry_run:
    return plan_compile.dry_run(spec, print_fn=print_fn)
  say(data_plan.describe(data))  # the sources and tokens this run trains on
  check_workdir(spec, workdir, say)  # before anything is compiled or written
  mesh = build_mesh(spec)
  from olmo_jax import trainer
  abstract, shard = trainer.state_shardings(mesh, spec.model, spec.optimizer,
                                            spec.step.policy.loss_scaling)
  # Compiled once, before anything is allocated or written: stops here when it cannot fit.
  train_step = build_step(spec, mesh, abstract, shard, print_fn)
  write_run_config(spec, workdir, mesh, say)
  checkpointer = build_checkpointer(spec, workdir)
  state, data_state = build_state(spec, mesh, abstract, shard, checkpointer, workdir, say)
  data_iter = build_data(spec, data, data_state)
  hooks = build_hooks(spec, data, mesh, checkpointer, data_iter, extra_callbacks)
  logger, log_hook = build_logging(spec, mesh, workdir)
  try:
    result = _train(spec, mesh, state, train_step, data_iter, [*hooks, log_hook], print_fn)
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
  """(the RunSpec, its data plan): the config resolved and checked once, JAX set up first
  (before its first use). Everything downstream takes the spec and the plan."""
  from olmo_jax import hostmem
  hostmem.keep_freed_memory()  # CPU only; must precede the first use of a JAX backend
  import jax  # after flags: XLA flags and platform choice are read on first use

  spec = config_lib.resolve(config, num_processes=jax.process_count())
  data = data_plan.resolve(spec.data)
  data_plan.validate_config(data, spec.model.vocab_size)
  ev = spec.eval
  if ev.every > 0 and not ev.tasks and not has_heldout_split(data):
    raise ValueError("eval.every > 0 reads the held-out split of each source, and "
                     "data.heldout_fraction is 0; set it (e.g. 0.01), name eval.tasks, "
                     "or set eval.every=0")
  if ev.tasks:
    from eval import tasks as tasks_lib  # the entry point may import eval; the library not
    tasks_lib.resolve_tasks(ev.tasks)  # an unknown name fails here, listing the known
    if ev.every <= 0 or ev.limit < 0:
      raise ValueError(f"eval.tasks={ev.tasks!r} needs eval.every > 0 (steps between "
                       "evaluations) and eval.limit >= 0")
  return spec, data


def has_heldout_split(data) -> bool:
  """Whether the in-loop loss has held-out data (a DataPlan): the data's split, or the
  synthetic stream."""
  return data.synthetic or data.holds_out


def build_mesh(spec: config_lib.RunSpec):
  """The device mesh; the microbatch must split evenly over its batch shards."""
  from olmo_jax import sharding
  t, m = spec.train, spec.mesh
  mesh = sharding.make_mesh(m.data, m.fsdp, m.tensor)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.microbatch_size % batch_shards:
    # The microbatch is the batch unless train.microbatch_size was set: name what was set.
    field, n = (("batch_size", t.batch_size) if t.microbatch_size == t.batch_size
                else ("microbatch_size", t.microbatch_size))
    raise ValueError(f"train.{field}={n} must be divisible by the {batch_shards} batch shards "
                     f"of the mesh (mesh.data * mesh.fsdp over {mesh.devices.size} devices); "
                     f"set --config.train.{field} to a multiple of {batch_shards}")
  return mesh


def check_workdir(spec: config_lib.RunSpec, workdir: str | None, say) -> None:
  """Guards run before anything is written to the workdir.

  Resume only into the same run (restart_guard.check_same_run against the newest complete
  checkpoint's config), and never start fresh over damaged checkpoints unless
  checkpoint.start_fresh_if_damaged.
  """
  c = spec.checkpoint
  if not (workdir and c.enabled):
    return
  from olmo_jax import checkpoint, restart_guard
  ckpt_dir = os.path.join(paths.abspath(workdir), "checkpoints")
  steps = checkpoint.complete_steps(ckpt_dir, kind=checkpoint.KIND_STATE, quiet=True)
  if steps:
    restart_guard.check_same_run(ckpt_dir, steps[-1], spec.tree,
                                 allow=c.allow_config_change, say=say)
  else:
    restart_guard.check_not_all_damaged(ckpt_dir, c.start_fresh_if_damaged)


def write_run_config(spec: config_lib.RunSpec, workdir: str | None, mesh, say) -> None:
  """config.json in the workdir (process 0) and the one-line summary of the run."""
  import jax
  if workdir and jax.process_index() == 0:
    paths.makedirs(workdir)
    config_lib.save_json(spec, os.path.join(workdir, "config.json"))
  d, t, m = spec.derived, spec.train, spec.model
  say(f"model {spec.size} ({m.variant}): N={d.non_embedding_params:,} "
      f"non-embedding params, {t.steps:,} steps x {d.tokens_per_step:,} tokens, "
      f"C={d.compute_flops:.3e} FLOPs; mesh {dict(mesh.shape)}, dtype {m.dtype}, "
      f"{spec.step.microbatches} microbatch(es)")


def build_checkpointer(spec: config_lib.RunSpec, workdir: str | None):
  """The workdir's Checkpointer (None without a workdir or with checkpoints disabled)."""
  c = spec.checkpoint
  if not (workdir and c.enabled):
    return None
  from data_pipeline import tokenizer as tok
  from olmo_jax import checkpoint_manager
  try:
    tok_hash = tok.tokenizer_hash(spec.data.tokenizer)
  except FileNotFoundError:
    tok_hash = None
  return checkpoint_manager.Checkpointer(
      os.path.join(workdir, "checkpoints"), every=c.every, keep=c.keep,
      keep_period=c.keep_period, async_save=c.async_save,
      metadata={"config": spec.tree, "tokenizer_hash": tok_hash})


def build_state(spec: config_lib.RunSpec, mesh, abstract, shard, checkpointer, workdir, say):
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
                                       spec.checkpoint.start_fresh_if_damaged)
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
    loss_scale = spec.train.loss_scale if spec.step.policy.loss_scaling else None
    state = trainer.init_state(mesh, spec.model, spec.optimizer, spec.train.seed, loss_scale,
                               params=init_from, shard=shard)
    data_state = None
    if init_from is not None:
      say(f"initialised params from the checkpoint in {workdir} (fresh optimizer state)")
  if checkpointer is not None:
    checkpointer.prepare(state)  # CPU: staging buffers for async saves, off the first save
  return state, data_state


def build_data(spec: config_lib.RunSpec, data, data_state=None):
  """This process's training batch iterator over the data plan, at `data_state` when
  resuming. The plan's corpora (embedded corpus, curated sources) are built first, here: the
  iterator only reads."""
  import jax

  from data_pipeline import mixture
  materialize.materialize(data)
  t = spec.train
  pc, pi = jax.process_count(), jax.process_index()
  data_iter = mixture.build_train_iterator(
      data, seq_len=t.seq_len, batch_size=t.batch_size // pc, seed=spec.data_seed,
      vocab_size=spec.model.vocab_size, process_index=pi, process_count=pc)
  if data_state is not None:
    data_iter.set_state(data_state)
  return data_iter


def build_step(spec: config_lib.RunSpec, mesh, abstract, shard, print_fn=print):
  """The jitted train step, compiled ahead of time against the plan (olmo_jax/plan.py): a
  step that cannot fit the devices stops here, with the settings that would fit."""
  from olmo_jax import trainer
  step = trainer.make_train_step(spec.model, spec.optimizer, spec.step, mesh, shard)
  return plan_compile.check(spec, mesh, abstract, shard, step, print_fn=print_fn)[0]


def build_hooks(spec: config_lib.RunSpec, data, mesh, checkpointer, data_iter,
                extra_callbacks=()) -> list:
  """The loop's hooks in order: callbacks and evaluation, signals, checkpoints."""
  from olmo_jax import sharding
  hooks = [cb if isinstance(cb, hooks_lib.Hook) else hooks_lib.CallbackHook(cb)
           for cb in extra_callbacks]
  if spec.eval.every > 0 and has_heldout_split(data):
    hooks.append(build_eval_hook(spec, data, sharding.batch_sharding(mesh)))
  if spec.eval.every > 0 and spec.eval.tasks:
    hooks.append(build_task_eval_hook(spec, mesh))
  hooks.append(hooks_lib.StopOnSignal())
  if checkpointer is not None:
    hooks.append(hooks_lib.CheckpointHook(checkpointer, data_iter.get_state))
  return hooks


def build_logging(spec: config_lib.RunSpec, mesh, workdir):
  """(metrics logger, the hook that writes to it every train.log_every steps)."""
  import jax

  from olmo_jax import sizes, trainer
  t, d, m = spec.train, spec.derived, spec.model
  first = jax.process_index() == 0
  # A bucket cannot append: metrics and TensorBoard events go to its local mirror.
  logger = console.MetricsLogger(paths.mirror(workdir) if workdir and first else workdir,
                                 enabled=first)
  hook = hooks_lib.LogHook(
      t.log_every, tokens_per_step=d.tokens_per_step, logger=logger,
      flops_per_token=sizes.flops_per_token(m.d_model, m.n_layers, t.seq_len,
                                            d.non_embedding_params),
      peak_flops=t.peak_flops_per_device or trainer.device_peak_flops())
  return logger, hook


def _train(spec: config_lib.RunSpec, mesh, state, train_step, data_iter, hooks, print_fn):
  from olmo_jax import sharding, trainer
  batch_sh = sharding.batch_sharding(mesh)
  batches = (trainer.put_batch(b, batch_sh) for b in data_iter)
  return trainer.train_loop(state, train_step, batches, total_steps=spec.train.steps,
                            hooks=hooks, policy=spec.step.policy,
                            progress_bar=spec.train.progress_bar, print_fn=print_fn)


def build_eval_hook(spec: config_lib.RunSpec, data, batch_sh):
  """In-loop evaluation every eval.every steps: mean loss on `eval.batches` batches of the
  data's held-out split (another seed of the synthetic stream)."""
  import jax
  import numpy as np

  from olmo_jax import trainer
  t = spec.train
  pc, pi = jax.process_count(), jax.process_index()
  batches = [trainer.put_batch(b, batch_sh) for b in heldout.heldout_batches(
      data, spec.eval.batches, seq_len=t.seq_len, batch_size=t.microbatch_size // pc,
      seed=spec.data_seed, vocab_size=spec.model.vocab_size, process_index=pi,
      process_count=pc)]
  eval_step = trainer.make_eval_step(spec.model)

  def held_out_loss(step, state):
    losses = [eval_step(state["params"], b) for b in batches]
    return {"eval_loss": float(np.mean(jax.device_get(losses)))}

  return hooks_lib.CallbackHook(held_out_loss, every=spec.eval.every)


def build_task_eval_hook(spec: config_lib.RunSpec, mesh):
  """In-loop task evaluation (eval/inloop.py) every eval.every steps: the tasks' primary
  metrics and suite macro averages, logged as eval/<task>/<metric> and eval/<suite>."""
  from eval import inloop
  ev = spec.eval
  callback = inloop.make_eval_callback(
      ev.tasks, ev.every, spec.model, limit=ev.limit or None, max_length=spec.train.seq_len,
      tokenizer=spec.data.tokenizer or "olmo", mesh=mesh)
  return hooks_lib.CallbackHook(callback, every=ev.every)


def parse_flags(argv: list[str]):
  """absl FLAGS of the command line (aliases translated); raises ValueError / flags.Error."""
  from absl import app, flags
  from ml_collections import config_flags
  app.define_help_flags()
  config, rest = config_files.load_config(translate_aliases(argv), f"{DEFAULT_CONFIG}:4M")
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
  lock = locking.lock_for(workdir) if workdir and not FLAGS.dry_run and first else None
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
