"""`python -m olmo_jax.train_pack --replica "TRAIN FLAGS" --replica "TRAIN FLAGS" ...`.

Trains K runs of one model shape as one program (olmo_jax/pack.py). Each `--replica` is what
`python -m olmo_jax.train` would take for that run (`--config FILE[:ARG] --workdir DIR
--config.<field>=<value> ...`), and each replica writes that run's workdir exactly as the
separate run would (config.json, checkpoints/, metrics.jsonl, train.log lines), so evaluation,
export, reports and a later `python -m olmo_jax.train` resume treat it as that run.
`--replicas_from FILE` reads one replica per line (a line of a study's plan.txt works: its
leading `python -m olmo_jax.train` is skipped).

The runs must differ only in their data (`data.*`) and seeds (`train.seed`); anything else is
refused with the field named. Restarting the same command resumes every replica from the
newest checkpoint step all of them hold complete. Exit 0: every replica done; 1: a replica
failed (named; the others' work is kept); 2: bad input or a busy workdir.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Sequence

import numpy as np

from olmo_jax import runtime

runtime.init()  # before the imports that load JAX: the CPU default, quietly

from data_pipeline import data_plan, heldout
from olmo_jax import (
    checkpoint,
    cli,
    config_files,
    locking,
    pack,
    paths,
    plan_options,
    sharding,
    train,
    trainer,
)
from olmo_jax import hooks as hooks_lib
from olmo_jax import workdir as workdir_lib
from olmo_jax.console import Console

# Settings in which the runs of one pack may differ: their data and their seeds.
PER_REPLICA = ("data", "train.seed")


def parse_replica(args: Sequence[str]):
  """(config, workdir) of one replica's `olmo_jax.train` flags; ValueError on a bad flag."""
  from absl import flags
  from ml_collections import config_flags
  args = list(args)
  if args[:3] in (["python", "-m", "olmo_jax.train"], [sys.executable, "-m", "olmo_jax.train"]):
    args = args[3:]
  config, rest = config_files.load_config(cli.translate_aliases(args),
                                         f"{train.DEFAULT_CONFIG}:4M")
  fv = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=fv, sys_argv=rest)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  try:
    extra = fv(["train_pack", *rest])[1:]
  except flags.Error as e:
    raise ValueError(str(e)) from None
  if extra:
    raise ValueError(f"unexpected argument {extra[0]!r} (flags take --name=value)")
  if not fv.workdir:
    raise ValueError("every replica needs --workdir DIR")
  return fv.config, fv.workdir


def shared_settings(cfg) -> dict:
  """{field: value} of a RunSpec that every replica of a pack must share."""
  flat = config_files.flatten(cfg.tree)
  return {k: v for k, v in flat.items()
          if not any(k == p or k.startswith(p + ".") for p in PER_REPLICA)}


def check_packable(cfgs: Sequence, workdirs: Sequence[str]) -> None:
  """ValueError naming the first field in which a replica differs from the first one."""
  if len(set(map(paths.abspath, workdirs))) < len(workdirs):
    raise ValueError("two replicas share a workdir; give each its own --workdir")
  first = shared_settings(cfgs[0])
  for i, cfg in enumerate(cfgs[1:], 1):
    other = shared_settings(cfg)
    for k in sorted(set(first) | set(other)):
      if first.get(k) != other.get(k):
        raise ValueError(
            f"replica {i} ({workdirs[i]}) differs from replica 0 ({workdirs[0]}) in {k} "
            f"({other.get(k)!r} vs {first.get(k)!r}): a pack holds runs that differ only in "
            f"{' and '.join(PER_REPLICA)}; train it in another pack")
  if cfgs[0].eval.tasks:
    raise ValueError("eval.tasks (in-loop task scores) is not available in a pack; score the "
                     "replicas' checkpoints with eval.run (or a study's packed scorer)")


def replica_printer(workdir: str, name: str, print_fn=print):
  """Console lines of one replica: appended to <workdir>/train.log and printed, prefixed."""
  path = os.path.join(paths.mirror(workdir), cli.LOG_FILE)

  def say(line: str) -> None:
    with open(path, "a") as f:
      f.write(line + "\n")
    print_fn(f"[{name}] {line}")
  return say


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m olmo_jax.train_pack", description=__doc__
                              .split("\n")[2])
  p.add_argument("--replica", action="append", default=[],
                 help="one run's olmo_jax.train flags, quoted as one argument")
  p.add_argument("--replicas_from", default=None,
                 help="file with one replica's flags per line (e.g. a study's plan.txt)")
  p.add_argument("--dry_run", action="store_true",
                 help="compile the packed step for config.plan's target (default: the devices "
                      "at hand) and print its plan: memory per device, fits or not")
  return p


def replica_args(a) -> list[list[str]]:
  """Each replica's flags, from --replica and --replicas_from."""
  out = [shlex.split(r) for r in a.replica]
  if a.replicas_from:
    if not os.path.isfile(a.replicas_from):
      raise ValueError(f"--replicas_from {a.replicas_from}: no such file")
    with open(a.replicas_from) as f:
      out += [shlex.split(line) for line in f if line.strip()]
  if not out:
    raise ValueError("no replicas: give --replica \"--config ... --workdir ...\" (repeated) or "
                     "--replicas_from FILE")
  return out


def resolve_replicas(replicas) -> tuple[list, list]:
  """(RunSpecs, data plans) of the replicas, checked to form one pack."""
  cfgs, datas = [], []
  for i, (config, workdir) in enumerate(replicas):
    try:
      cfg, data = train.build_config(config)
    except (ValueError, FileNotFoundError, KeyError) as e:
      raise ValueError(f"replica {i} ({workdir}): {e}") from None
    cfgs.append(cfg)
    datas.append(data)
  check_packable(cfgs, [w for _, w in replicas])
  return cfgs, datas


def replica_names(workdirs: Sequence[str]) -> list[str]:
  """Short names of the replicas: their workdirs below the directory they share."""
  full = [paths.abspath(w) for w in workdirs]
  if len(full) == 1:
    return [os.path.basename(full[0].rstrip("/"))]
  root = os.path.commonpath(full)
  return [os.path.relpath(w, root) for w in full]


def start_states(cfgs, workdirs, ckpts, one, abstract, shard, says):
  """(start step, per-replica states, per-replica data states): every replica at the newest
  checkpoint step all of them hold complete, else all freshly initialised."""
  latest = [c.latest_step() if c is not None else None for c in ckpts]
  start = min(latest) if latest and None not in latest else 0
  states, data_states = [], []
  spec = cfgs[0]
  loss_scale = spec.train.loss_scale if spec.step.policy.loss_scaling else None
  init = trainer.make_state_init(one, spec.model, spec.optimizer, loss_scale, shard)  # one compile
  for cfg, w, c, say in zip(cfgs, workdirs, ckpts, says):
    if start:
      state, data_state, _ = c.restore(abstract, step=start)
      say(f"resumed from {w}/checkpoints at step {start}")
    else:
      init_from = checkpoint.load_init_params(w, abstract["params"]) if c is not None else None
      state = init(cfg.train.seed, init_from)
      data_state = None
    if c is not None:
      c.prepare(state)
    states.append(state)
    data_states.append(data_state)
  return start, states, data_states


def heldout_hook(cfgs, datas, sh):
  """The pack's held-out loss (pack.PackedHeldout) when the replicas' configs ask for it."""
  cfg = cfgs[0]
  if not (cfg.eval.every > 0 and all(train.has_heldout_split(d) for d in datas)):
    return None
  t = cfg.train
  per = [[b["input_ids"] for b in heldout.heldout_batches(
      d, c.eval.batches, seq_len=t.seq_len, batch_size=t.microbatch_size,
      seed=c.data_seed, vocab_size=c.model.vocab_size, process_index=0,
      process_count=1)] for c, d in zip(cfgs, datas)]
  batches = [np.stack(bs) for bs in zip(*per)]
  return pack.PackedHeldout(cfg.model, batches, cfg.eval.every, sh)


def run_pack(replicas, cfgs, datas, print_fn=print) -> dict:
  """Trains (or resumes) the pack; {"failed": {name: why}, "step": last step dispatched}."""
  import jax

  if jax.process_count() > 1:
    raise ValueError("a pack trains in one process; spread its replicas over the devices of "
                     "one host, or run several packs")
  workdirs, names, cfg = [w for _, w in replicas], replica_names([w for _, w in replicas]), cfgs[0]
  # The replicas share cfg's model, optimizer and step config (check_packable).
  mesh = pack.pack_mesh(len(replicas))
  sh = pack.packed_sharding(mesh)
  one = sharding.make_mesh(1, 1, 1, jax.devices()[:1])  # where each replica is built alone
  abstract, shard = trainer.state_shardings(one, cfg.model, cfg.optimizer,
                                            cfg.step.policy.loss_scaling)
  step_fn = pack.make_packed_step(cfg.model, cfg.optimizer, cfg.step, sh)
  says = [replica_printer(w, n, print_fn) for w, n in zip(workdirs, names)]
  for c, w, say in zip(cfgs, workdirs, says):
    train.check_workdir(c, w, say)  # before anything is written
  for c, d, w, say in zip(cfgs, datas, workdirs, says):
    say(data_plan.describe(d))
    train.write_run_config(c, w, mesh, say)
  ckpts = [train.build_checkpointer(c, w) for c, w in zip(cfgs, workdirs)]
  start, states, data_states = start_states(cfgs, workdirs, ckpts, one, abstract, shard, says)
  state = jax.device_put(pack.stack(states), sh)
  del states
  iters = [train.build_data(c, d, ds) for c, d, ds in zip(cfgs, datas, data_states)]
  logging_ = [train.build_logging(c, mesh, w) for c, w in zip(cfgs, workdirs)]
  hooks = [([hooks_lib.CheckpointHook(ck, it.get_state)] if ck is not None else []) + [lh]
           for ck, it, (_, lh) in zip(ckpts, iters, logging_)]
  consoles = [Console(start, cfg.train.steps, progress_bar=False, print_fn=say)
              for say in says]
  loop = pack.PackLoop(names, start, cfg.train.steps, hooks, cfg.step.policy, consoles,
                       print_fn=print_fn)
  pack_hooks = [h for h in (heldout_hook(cfgs, datas, sh), hooks_lib.StopOnSignal()) if h]
  print_fn(f"[pack] {len(replicas)} replicas of {cfg.size} on {mesh.size} device(s), "
           f"steps {start} -> {cfg.train.steps}")
  try:
    batches = pack.PackBatches(loop, iters, (cfg.train.batch_size, cfg.train.seq_len + 1), sh)
    step, _, _ = pack.pack_loop(state, step_fn, batches, loop, pack_hooks)
  finally:
    for logger, _ in logging_:
      logger.close()
    _close_checkpointers(loop, ckpts)
  return {"failed": {r.name: r.failed for r in loop.replicas if r.failed}, "step": step}


def _close_checkpointers(loop, ckpts) -> None:
  """Waits for every replica's saves; a failed save fails that replica only."""
  for r, ck in zip(loop.replicas, ckpts):
    if ck is None:
      continue
    try:
      ck.wait()
    except checkpoint.CheckpointError as e:
      if r.failed is None:
        loop.fail(r, str(e))
    finally:
      ck.close()


def dry_run(cfgs, print_fn=print):
  """The compiled plan of the pack for config.plan's target (the local devices by default);
  nothing is allocated or written."""
  from olmo_jax import pack_plan, plan_compile
  cfg = cfgs[0]
  opts = plan_options.plan_options(cfg)
  platform, here = plan_compile.target_platform(opts)
  target = None
  if platform != here:
    target = plan_compile.build_target(platform, opts, opts.devices or 1)
  p = pack_plan.pack_plan(cfg, len(cfgs), target)
  print_fn(p.format() + ("" if p.fits else "\nWARNING: the pack does not fit the device memory"))
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: exit 0 done, 1 a replica failed, 2 bad input or a busy workdir."""
  a = _parser().parse_args(sys.argv[1:] if argv is None else argv)
  cli.setup_logging(None, None)
  try:
    replicas = [parse_replica(r) for r in replica_args(a)]
    if a.dry_run:
      from olmo_jax import plan_compile
      replicas = [(plan_compile.for_target(c), w) for c, w in replicas]
    cfgs, datas = resolve_replicas(replicas)  # nothing is written before this passes
    if a.dry_run:
      dry_run(cfgs)
      return 0
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  locks = []
  try:
    for _, workdir in replicas:
      locks.append(locking.lock_for(workdir))
      took_over = locks[-1].acquire()
      if took_over:
        logging.warning(took_over)
  except (OSError, workdir_lib.WorkdirBusyError) as e:
    print(f"error: {e}", file=sys.stderr)
    for lock in locks[:-1]:
      lock.release()
    return 2
  try:
    out = run_pack(replicas, cfgs, datas)
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    paths.sync_mirrors()
    for lock in locks:
      lock.release()
  for name, why in out["failed"].items():
    print(f"error: replica {name} failed: {why}", file=sys.stderr)
  return 1 if out["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
