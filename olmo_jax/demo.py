"""`make demo`: build the sample corpus, train a 4M model on it, evaluate it, export it to HF.

Everything runs offline on a CPU in a few minutes. Rerunning resumes from runs/demo (and
then only re-evaluates). `python -m olmo_jax.demo --steps 300 --workdir runs/demo300`.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import subprocess
import sys

from data_pipeline import data_plan, heldout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The following function returns"


def demo_config(steps: int, batch: int, seq_len: int, data_dir: str):
  from olmo_jax.config import load_config_file
  c = load_config_file(os.path.join(REPO, "configs", "train.py"), "4M")
  c.data.mixture = "sample"
  c.data.data_dir = data_dir
  c.train.steps = steps
  c.train.batch_size = batch
  c.train.seq_len = seq_len
  c.train.warmup_steps = max(steps // 10, 1)
  c.train.log_every = 10
  c.eval.every = max(steps // 4, 1)
  c.eval.batches = 4
  c.data.heldout_fraction = 0.05  # documents kept out of training for the held-out loss
  c.checkpoint.every = max(steps // 2, 1)
  return c


def offline_eval_command(hf_dir: str, out_dir: str) -> str:
  """The command the demo suggests for its HF export: OLMES PIQA from the shipped request
  files, so it runs without the network (lm-eval's own piqa downloads its dataset)."""
  return (f"python -m eval.run --checkpoint {shlex.quote(hf_dir)} --tasks piqa --limit 100 "
          f"--output {shlex.quote(out_dir)} --overwrite")


def greedy_continue(mcfg, params, tokenizer, prompt: str, n_tokens: int) -> str:
  """The prompt and its greedy continuation (eval/scorer.py's KV-cached decoder)."""
  from eval import scorer as scorer_lib  # an entry point may import eval
  ids = tokenizer.encode(prompt).ids
  new = scorer_lib.greedy_generate(scorer_lib.Scorer(mcfg, params), [ids], n_tokens)[0]
  return tokenizer.decode(ids + new)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "demo"))
  p.add_argument("--data-dir", default=os.path.join(REPO, "data"))
  p.add_argument("--steps", type=int, default=120)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq-len", type=int, default=256)
  a = p.parse_args(argv)

  from olmo_jax import config as config_lib
  from olmo_jax.train import run
  config = demo_config(a.steps, a.batch, a.seq_len, a.data_dir)
  print(f"== training a 4M OLMo on the embedded sample corpus -> {a.workdir}", flush=True)
  result = run(config, a.workdir)
  cfg = config_lib.resolve(config)
  mcfg = config_lib.model_config(cfg)

  import jax
  import numpy as np

  from data_pipeline.tokenizer import load_tokenizer
  from olmo_jax import trainer
  params = jax.device_get(result.state["params"])
  eval_step = trainer.make_eval_step(mcfg)
  batches = heldout.heldout_batches(data_plan.resolve(cfg.data), 8, seq_len=a.seq_len,
                                    batch_size=a.batch, seed=cfg.train.seed,
                                    vocab_size=mcfg.vocab_size)
  loss = float(np.mean([eval_step(params, b) for b in batches]))
  init = trainer.init_params(mcfg, cfg.train.seed)
  loss0 = float(np.mean([eval_step(init, b) for b in batches[:2]]))
  print(f"== evaluation: held-out loss {loss:.3f} (perplexity {math.exp(loss):,.1f}); "
        f"untrained {loss0:.3f}; uniform ln(V) = {math.log(mcfg.embedding_size):.3f}")
  tok = load_tokenizer("olmo")
  print(f"== greedy continuation: {greedy_continue(mcfg, params, tok, PROMPT, 24)!r}")

  hf_dir = os.path.join(a.workdir, "hf")
  print(f"== exporting to HuggingFace format -> {hf_dir}", flush=True)
  rc = subprocess.call([sys.executable, os.path.join(REPO, "scripts", "convert_to_hf.py"),
                        "--checkpoint", a.workdir, "--output", hf_dir, "--overwrite"])
  if rc:
    print("export failed", file=sys.stderr)
    return rc
  print("== done. Score the HF export offline (OLMES PIQA) with: "
        + offline_eval_command(hf_dir, os.path.join(a.workdir, "eval-hf")))
  return 0


if __name__ == "__main__":
  sys.exit(main())
