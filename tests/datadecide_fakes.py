"""A fake trainer and scorer for the DataDecide study tests (no JAX, instant, countable).

`python -m datadecide_fakes --config X --workdir W --config.train.steps=N
--config.checkpoint.every=E ...` trains N "steps" of DD_FAKE_STEP_S seconds each, appends
every step it runs to W/steps.log (and to W/metrics.jsonl, as the trainer logs), and writes
checkpoints in the layout of olmo_jax/checkpoint.py (state/, commit marker, manifest). It
resumes from its newest complete checkpoint, like the real trainer. `make_scorer(study)`
returns a scorer that appends every call to <study workdir>/evals.log and scores recipe r at
step s as loss = index(r) + 10 / s.
"""

from __future__ import annotations

import json
import os
import sys
import time

# The body of a study config for these fakes: three recipes, two tiny custom sizes, one seed.
STUDY_BODY = """\
  c.name = "fake"
  c.recipes = ml_collections.ConfigDict({r: {"mixture": "custom", "sources": f"t={r}/*.npy"}
                                        for r in ("a", "b", "c")})
  c.custom_sizes = ml_collections.ConfigDict({"t1": {"d_model": 8, "n_heads": 1, "n_layers": 1},
                                             "t2": {"d_model": 16, "n_heads": 1, "n_layers": 1}})
  c.sizes = ["t1"]
  c.target = "t2"
  c.seeds = [1]
  c.seq_len = 16
  c.batch_size = 2
  c.steps = ml_collections.ConfigDict({"t1": 12, "t2": 20})
  c.checkpoint_every = 4
  c.train_module = "datadecide_fakes"
  c.eval = ml_collections.ConfigDict({"scorer": "datadecide_fakes:make_scorer"})
"""


def write_study_config(path, body: str = STUDY_BODY) -> str:
  """Writes a study config file whose get_config() runs `body`; returns its path."""
  path.write_text("import ml_collections\n\n\ndef get_config():\n"
                  "  c = ml_collections.ConfigDict()\n" + body + "  return c\n")
  return str(path)


def _flags(argv):
  out = {}
  for a in argv:
    if a.startswith("--") and "=" in a:
      k, v = a[2:].split("=", 1)
      out[k] = v
  it = iter(argv)
  for a in it:
    if a == "--workdir":
      out["workdir"] = next(it)
  return out


def _complete(ckdir):
  steps = []
  if os.path.isdir(ckdir):
    for name in os.listdir(ckdir):
      d = os.path.join(ckdir, name)
      if name.isdigit() and os.path.isfile(os.path.join(d, "olmo_manifest.json")):
        steps.append(int(name))
  return sorted(steps)


def _save(ckdir, step):
  tmp = os.path.join(ckdir, f"{step}.tmp")
  os.makedirs(os.path.join(tmp, "state"), exist_ok=True)
  with open(os.path.join(tmp, "state", "value.json"), "w") as f:
    json.dump({"step": step}, f)
  with open(os.path.join(tmp, "commit_success.txt"), "w") as f:
    f.write("ok")
  files = {}
  for root, _, names in os.walk(tmp):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), tmp)
      files[rel] = [os.path.getsize(os.path.join(tmp, rel)), 0]
  with open(os.path.join(tmp, "olmo_manifest.json"), "w") as f:
    json.dump({"files": files}, f)
  os.replace(tmp, os.path.join(ckdir, str(step)))


def main(argv):
  f = _flags(argv)
  wd = f["workdir"]
  steps, every = int(f["config.train.steps"]), int(f["config.checkpoint.every"])
  ckdir = os.path.join(wd, "checkpoints")
  os.makedirs(ckdir, exist_ok=True)
  done = _complete(ckdir)
  start = done[-1] if done else 0
  pause = float(os.environ.get("DD_FAKE_STEP_S", "0.05"))
  for step in range(start + 1, steps + 1):
    time.sleep(pause)
    with open(os.path.join(wd, "steps.log"), "a") as log:
      log.write(f"{step}\n")
    with open(os.path.join(wd, "metrics.jsonl"), "a") as log:  # as the trainer logs
      log.write(json.dumps({"step": step, "tokens_per_s": 32.0 / max(pause, 1e-3)}) + "\n")
    if step % every == 0 or step == steps:
      _save(ckdir, step)
  return 0


def make_scorer(study):
  recipes = list(study.c.recipes)
  log = os.path.join(study.workdir, "evals.log")

  def scorer(cell, step, ckpt_dir, out_dir):
    with open(log, "a") as f:
      f.write(f"{cell.name} {step}\n")
    return {"fake": {"loss": recipes.index(cell.recipe) + 10.0 / step}}

  return scorer


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
