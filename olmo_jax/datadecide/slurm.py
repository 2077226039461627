"""A study's grid as a SLURM job array (`--executor slurm`), as DataDecide ran its runs: one
scheduler task per cell, relaunched with skip-if-done.

    python -m olmo_jax.datadecide --config STUDY.py --workdir W --executor slurm \\
        [--partition P] [--time 4:00:00] [--gpus-per-task 1] [--cpus-per-task 8] [--mem 64G] \\
        [--cells-per-task K] [--max-parallel M] [--sbatch-args='--account=A --qos=Q']

submits, from a login node with W on a filesystem every node sees:
- an array job of one task per pack of cells not done (a pack: `--cells-per-task` cells of one
  size, 1 by default); task i runs `python -m olmo_jax.datadecide.slurm task ...`, which
  trains its cells as one pack (packing.PackingExecutor: one olmo_jax.train_pack process; a
  single cell, or a study with its own train_module, trains with a LocalExecutor), resuming
  each cell from its newest checkpoint, and scores each cell's checkpoints as it completes;
- a collect job, `--dependency=afterany` on the array: `python -m olmo_jax.datadecide --collect`
  scores what is left, writes the results table, the report and recommendation.json, and
  exits 1 when cells are missing (a cancelled or failed task).
Submitting again submits only the cells that are neither done (final checkpoint, every grid
checkpoint scored) nor in a task still queued or running (W/slurm/jobs.jsonl and squeue).
Files: W/slurm/array-N.json (task i -> its cells), array-N.sh and collect-N.sh (the batch
scripts, resubmittable by hand), jobs.jsonl (one line per submitted job), logs/ (job logs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from olmo_jax import runtime

# `python -m olmo_jax.datadecide.slurm task` is an entry point: before the imports load JAX.
runtime.init()

from data_pipeline import atomic
from olmo_jax.datadecide import cells as cells_lib
from olmo_jax.datadecide import packing, runner
from olmo_jax.datadecide.results import InputError
from olmo_jax.datadecide.study import REPO, Cell, Study, load_study_config

JOBS = "jobs.jsonl"


@dataclasses.dataclass(frozen=True)
class Options:
  """What the user asks of the scheduler (see add_arguments)."""

  partition: str | None = None
  time: str | None = None
  gpus_per_task: int = 0
  cpus_per_task: int | None = None
  mem: str | None = None
  cells_per_task: int = 1
  max_parallel: int | None = None
  sbatch_args: tuple[str, ...] = ()
  python: str = sys.executable

  def check(self) -> None:
    if self.cells_per_task < 1:
      raise InputError(f"--cells-per-task {self.cells_per_task} must be >= 1")
    if self.gpus_per_task < 0:
      raise InputError(f"--gpus-per-task {self.gpus_per_task} must be >= 0")
    if self.cpus_per_task is not None and self.cpus_per_task < 1:
      raise InputError(f"--cpus-per-task {self.cpus_per_task} must be >= 1")
    if self.max_parallel is not None and self.max_parallel < 1:
      raise InputError(f"--max-parallel {self.max_parallel} must be >= 1")

  def common_flags(self) -> list[str]:
    """sbatch flags of both jobs: partition, time and the user's extra flags."""
    out = [f"--partition={self.partition}"] if self.partition else []
    out += [f"--time={self.time}"] if self.time else []
    return out + list(self.sbatch_args)

  def task_flags(self) -> list[str]:
    """sbatch flags of the array's tasks: one task each, its GPUs, CPUs and memory."""
    out = ["--ntasks=1"]
    out += [f"--gpus-per-task={self.gpus_per_task}"] if self.gpus_per_task else []
    out += [f"--cpus-per-task={self.cpus_per_task}"] if self.cpus_per_task else []
    out += [f"--mem={self.mem}"] if self.mem else []
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The `--executor slurm` flags of `python -m olmo_jax.datadecide`."""
  g = p.add_argument_group("--executor slurm (a job array, one task per cell, and a collect job)")
  g.add_argument("--partition", default=None, help="sbatch --partition of both jobs")
  g.add_argument("--time", default=None, help="sbatch --time of each job, e.g. 4:00:00")
  g.add_argument("--gpus-per-task", type=int, default=0, help="GPUs of each array task")
  g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs of each array task")
  g.add_argument("--mem", default=None, help="sbatch --mem of each array task, e.g. 64G")
  g.add_argument("--cells-per-task", type=int, default=1,
                 help="cells (of one size) trained one after another by each array task")
  g.add_argument("--max-parallel", type=int, default=None,
                 help="array tasks running at once (sbatch --array=...%%M)")
  g.add_argument("--sbatch-args", default="",
                 help="further sbatch flags for both jobs, e.g. --sbatch-args='--account=A'")


def options_from(a: argparse.Namespace) -> Options:
  o = Options(a.partition, a.time, a.gpus_per_task, a.cpus_per_task, a.mem, a.cells_per_task,
              a.max_parallel, tuple(shlex.split(a.sbatch_args)))
  o.check()
  return o


def trained(study: Study, cell: Cell) -> bool:
  """DONE.json, or a complete checkpoint at the final step (however it was trained)."""
  return study.is_done(cell) or study.steps(cell.size) in cells_lib.complete_checkpoints(
      study.cell_dir(cell))


def finished(study: Study, cell: Cell) -> bool:
  """Trained and every grid checkpoint scored: nothing left to submit."""
  return trained(study, cell) and not cells_lib.unscored_steps(study, cell)


def packs(cells: list[Cell], per_task: int) -> list[list[Cell]]:
  """Cells in runs of at most `per_task`, each of one size (one task's resources fit them)."""
  out: list[list[Cell]] = []
  for cell in cells:
    if out and len(out[-1]) < per_task and out[-1][0].size == cell.size:
      out[-1].append(cell)
    else:
      out.append([cell])
  return out


def _run(argv: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def queued(study: Study) -> dict[str, str]:
  """{cell name: 'JOB_TASK STATE'} of the cells in array tasks still pending or running."""
  path = os.path.join(study.workdir, "slurm", JOBS)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    subs = [r for r in map(json.loads, filter(str.strip, f)) if r.get("array")]
  ids = ",".join(str(s["array"]) for s in subs)
  has_squeue = shutil.which("squeue") is not None
  proc = _run(["squeue", "-h", "-r", "-j", ids, "-o", "%i %T"]) if ids and has_squeue else None
  if proc is None or proc.returncode != 0:  # jobs the scheduler forgot are not queued
    return {}
  out = {}
  for job_task, state in (line.split() for line in proc.stdout.splitlines() if line.strip()):
    job, _, task = job_task.partition("_")
    for s in subs:
      if str(s["array"]) == job and task.isdigit() and int(task) < len(s["packs"]):
        for name in s["packs"][int(task)]:
          out[name] = f"{job_task} {state}"
  return out


def max_array_size() -> int | None:
  """The cluster's MaxArraySize (array indices must stay below it), or None if unknown."""
  proc = _run(["scontrol", "show", "config"])
  for line in proc.stdout.splitlines() if proc.returncode == 0 else ():
    key, _, value = line.partition("=")
    if key.strip() == "MaxArraySize" and value.strip().isdigit():
      return int(value.strip())
  return None


def _sbatch(argv: list[str]) -> str:
  """Runs sbatch --parsable; returns the job id (InputError with sbatch's own message)."""
  proc = _run(["sbatch", "--parsable", *argv])
  if proc.returncode != 0:
    msg = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
    raise InputError(f"sbatch refused the job ({msg}); fix the --executor slurm options")
  return proc.stdout.strip().split(";")[0]


def _check_cluster(opts: Options, todo: list[Cell]) -> None:
  """Fails (InputError) before anything is written when sbatch is missing, the array is
  larger than the cluster allows, or sbatch rejects the options (sbatch --test-only)."""
  if shutil.which("sbatch") is None:
    raise InputError("--executor slurm: sbatch not found on PATH; submit from a SLURM login "
                     "node, or write plan.txt with --plan for another scheduler")
  n_tasks, limit = len(packs(todo, opts.cells_per_task)), max_array_size()
  if limit is not None and n_tasks > limit:
    fits = next(k for k in range(opts.cells_per_task, len(todo) + 1)
                if len(packs(todo, k)) <= limit)
    raise InputError(f"--executor slurm: {n_tasks} array tasks exceed this cluster's "
                     f"MaxArraySize {limit}; pass --cells-per-task {fits} or more")
  if n_tasks:
    _sbatch(["--test-only", *opts.common_flags(), *opts.task_flags(), "--wrap", "true"])


def submit(study: Study, config_path: str, opts: Options, collect_flags: list[str] = (),
           print_fn=print) -> dict:
  """Submits the array of cells not finished nor queued, and the collect job after it (which
  runs the study's `--collect` with `collect_flags`, e.g. --launch)."""
  all_cells = study.cells()
  in_queue = queued(study)
  done = [c for c in all_cells if finished(study, c)]
  todo = [c for c in all_cells if c not in done and c.name not in in_queue]
  groups = packs(todo, opts.cells_per_task)
  _check_cluster(opts, todo)
  runner.prepare(study)
  cells_lib.recognise_done(study, all_cells)
  d = os.path.join(study.workdir, "slurm")
  os.makedirs(os.path.join(d, "logs"), exist_ok=True)
  n = sum(1 for name in os.listdir(d) if name.startswith("collect-"))
  config_path = os.path.abspath(config_path)
  name = "dd-" + re.sub(r"[^\w.-]", "_", study.c.name)
  after = sorted({v.split("_")[0] for v in in_queue.values()})
  record = {"array": None, "packs": [[c.name for c in g] for g in groups]}
  if groups:
    manifest = os.path.join(d, f"array-{n}.json")
    atomic.write_json(manifest, {"packs": record["packs"]})
    throttle = f"%{opts.max_parallel}" if opts.max_parallel else ""
    script = _write_script(os.path.join(d, f"array-{n}.sh"), [
        f"--job-name={name}", f"--array=0-{len(groups) - 1}{throttle}",
        f"--output={d}/logs/%A_%a.out"],
        [opts.python, "-m", "olmo_jax.datadecide.slurm", "task", "--config", config_path,
         "--workdir", study.workdir, "--manifest", manifest])
    record["array"] = _sbatch([*opts.common_flags(), *opts.task_flags(), script])
    after.append(record["array"])
    _append(d, record)  # recorded at once: a rerun must see these tasks even if what follows fails
  script = _write_script(os.path.join(d, f"collect-{n}.sh"), [
      f"--job-name={name}-collect", "--ntasks=1", f"--output={d}/logs/collect-%j.out"],
      [opts.python, "-m", "olmo_jax.datadecide", "--config", config_path, "--workdir",
       study.workdir, "--collect", *collect_flags])
  dep = [f"--dependency=afterany:{':'.join(after)}"] if after else []
  record["collect"] = _sbatch([*opts.common_flags(), *dep, script])
  _append(d, {"collect": record["collect"], "after": after})
  n_trained = sum(trained(study, c) for c in todo)
  _print_submitted(study, config_path, print_fn, (len(all_cells), len(done), len(in_queue),
                                                  len(todo), n_trained), record)
  return record


def _write_script(path: str, sbatch_lines: list[str], argv: list[str]) -> str:
  """A batch script: its #SBATCH lines, then `cd REPO && exec ARGV`; returns its path."""
  atomic.write_atomic(path, "\n".join(
      ["#!/bin/bash", *(f"#SBATCH {line}" for line in sbatch_lines), "set -euo pipefail",
       f"cd {shlex.quote(REPO)}", "exec " + shlex.join(argv), ""]))
  return path


def _append(d: str, record: dict) -> None:
  with open(os.path.join(d, JOBS), "a") as f:
    f.write(json.dumps(record) + "\n")


def _print_submitted(study, config_path, print_fn, counts, record) -> None:
  n_cells, n_done, n_queued, n_todo, n_trained = counts
  tasks = len(record["packs"])
  print_fn(f"[study] {n_cells} cells: {n_done} done, {n_queued} queued or running in earlier "
           f"jobs, {n_todo} submitted in {tasks} array task(s)"
           + (f" ({n_trained} already trained: scored only)" if n_trained else ""))
  jobs = [j for j in (record["array"], record["collect"]) if j]
  if record["array"]:
    print_fn(f"[study] array job {record['array']} (tasks 0-{tasks - 1}); collect job "
             f"{record['collect']} after it writes the results and the report")
  else:
    print_fn(f"[study] nothing to train; collect job {record['collect']} writes the results "
             f"and the report")
  print_fn(f"[study] logs: {study.workdir}/slurm/logs/; watch: squeue -j {','.join(jobs)}; "
           f"python -m olmo_jax.datadecide status --config {config_path} --workdir {study.workdir}")


def task_main(argv: list[str]) -> int:
  """`python -m olmo_jax.datadecide.slurm task --config C --workdir W --manifest M [--task I]`:
  trains and scores the cells of array task I (default: SLURM_ARRAY_TASK_ID)."""
  p = argparse.ArgumentParser(prog="python -m olmo_jax.datadecide.slurm task")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--manifest", required=True)
  p.add_argument("--task", type=int, default=None)
  a = p.parse_args(argv)
  index = a.task if a.task is not None else int(os.environ["SLURM_ARRAY_TASK_ID"])
  study = Study(load_study_config(a.config), a.workdir)
  by_name = {c.name: c for c in study.cells()}
  with open(a.manifest) as f:
    names = json.load(f)["packs"][index]
  cells = [by_name[n] for n in names]
  print(f"[study] array task {index}: {', '.join(names)}", flush=True)
  scorer = cells_lib.make_scorer(study)
  failed, scored = runner.train_and_score(study, cells, _task_executor(study, cells, index, scorer),
                                          scorer)
  print(f"[study] array task {index}: {len(cells) - len(failed)} of {len(cells)} cell(s) "
        f"done, {scored} checkpoint(s) scored", flush=True)
  return 1 if failed else 0


def _task_executor(study: Study, cells: list[Cell], index: int, scorer):
  """A task's cells of one size train as one pack (olmo_jax.train_pack) when there are several
  and the study trains with olmo_jax.train; else one after another."""
  if len(cells) > 1 and study.c.train_module == "olmo_jax.train":
    return packing.PackingExecutor(scorer, workers=1, pack_size=len(cells),
                                   name_prefix=f"task{index}-")
  return runner.LocalExecutor(workers=1, scope=cells)


if __name__ == "__main__":
  if sys.argv[1:2] != ["task"]:
    sys.exit("usage: python -m olmo_jax.datadecide.slurm task --config C --workdir W "
             "--manifest M [--task I]")
  sys.exit(task_main(sys.argv[2:]))
