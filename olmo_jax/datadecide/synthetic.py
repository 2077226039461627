"""Recipes of known quality from the embedded corpus: clean text and corrupted copies of it.

`build(data_dir, noise_levels)` builds the sample corpus (data_pipeline/sample_corpus.py) and
splits each of its token files into a training part (the first 90% of its documents) and a
held-out part (the rest). The training part is written once per noise level p, with each
token replaced, with probability p, by a token id drawn uniformly from the ids the corpus
uses: the higher p, the worse the recipe, by construction. Layout under <data_dir>/dd_synthetic/:

  heldout/part-*.npy         clean held-out documents (never trained on)
  noise<pct>/part-*.npy      training documents at corruption level pct (noise0 = clean)
  manifest.json              levels, seed and token counts; written last (the build is done)

Files are OLMo token files (raw little-endian uint16, EOS after each document). A recipe
reads one level with `data.mixture=custom`, `data.sources=text=dd_synthetic/noise10/*.npy`.

With `vocab=V > 0` the ids are re-coded into a compact vocabulary (root `dd_synthetic_v<V>`):
the V - 2 most frequent ids keep their own id (0 ... V - 3, by frequency), every other id
becomes V - 2 and EOS becomes V - 1. Models with a V-row embedding then train on the same
text at a fraction of the cost of the 50,304-row OLMo head (what small CPU studies need).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile

import numpy as np

from data_pipeline import sample_corpus
from data_pipeline.heldout import open_tokens
from data_pipeline.tokenizer import EOS_TOKEN_ID

ROOT = "dd_synthetic"
HELDOUT_FRACTION = 0.1


def level_name(p: float) -> str:
  return f"noise{int(round(p * 100))}"


def root_name(vocab: int = 0) -> str:
  return f"{ROOT}_v{vocab}" if vocab else ROOT


def sources(p: float, vocab: int = 0) -> str:
  """`data.sources` of the recipe at corruption level p (relative to data_dir)."""
  return f"text={root_name(vocab)}/{level_name(p)}/*.npy"


def heldout(vocab: int = 0) -> str:
  """Glob of the held-out files (relative to data_dir)."""
  return f"{root_name(vocab)}/heldout/*.npy"


def _recode(parts: list[np.ndarray], vocab: int, eos: int) -> list[np.ndarray]:
  """Maps ids onto [0, vocab): most frequent first, the rest to vocab - 2, EOS to vocab - 1."""
  ids = np.concatenate(parts)
  counts = np.bincount(ids, minlength=eos + 1)
  counts[eos] = 0
  order = np.argsort(-counts, kind="stable")[:vocab - 2]
  table = np.full(len(counts), vocab - 2, dtype=np.uint16)
  table[order] = np.arange(len(order), dtype=np.uint16)
  table[eos] = vocab - 1
  return [table[p] for p in parts]


def build(data_dir: str, noise_levels=(0.0, 0.1, 0.3), seed: int = 0, vocab: int = 0) -> str:
  """Writes the held-out split and one training copy per noise level (once); returns root."""
  if vocab and not 4 <= vocab <= EOS_TOKEN_ID:
    raise ValueError(f"synthetic vocab={vocab} must be 0 (OLMo ids) or in [4, 50279]")
  root = os.path.join(data_dir, root_name(vocab))
  manifest = os.path.join(root, "manifest.json")
  want = sorted({level_name(p) for p in noise_levels})
  if os.path.isfile(manifest):
    with open(manifest) as f:
      have = json.load(f)
    if set(want) <= set(have["levels"]) and have["seed"] == seed and \
        have.get("vocab", 0) == vocab:
      return root
  sample_corpus.build(data_dir)
  files = sorted(glob.glob(os.path.join(sample_corpus.corpus_dir(data_dir), "*", "*.npy")))
  if not files:
    raise FileNotFoundError(f"no token files under {sample_corpus.corpus_dir(data_dir)}")
  tmp = tempfile.mkdtemp(prefix=root_name(vocab) + ".tmp-", dir=data_dir)  # one per builder
  os.makedirs(os.path.join(tmp, "heldout"))
  rng = np.random.default_rng(seed)
  parts = [np.array(open_tokens(path)) for path in files]  # the corpus's uint16 ids
  eos = EOS_TOKEN_ID
  if vocab:
    parts = _recode(parts, vocab, eos)
    eos = vocab - 1
  train_parts = []
  for i, ids in enumerate(parts):
    ends = np.flatnonzero(ids == eos)
    cut = int(ends[int(len(ends) * (1 - HELDOUT_FRACTION))]) + 1 if len(ends) > 10 else len(ids)
    ids[cut:].tofile(os.path.join(tmp, "heldout", f"part-{i:05d}.npy"))
    train_parts.append(ids[:cut])
  used = np.unique(np.concatenate(train_parts))
  used = used[used != eos]
  counts = {}
  for name in want:
    p = int(name[len("noise"):]) / 100.0
    os.makedirs(os.path.join(tmp, name))
    for i, ids in enumerate(train_parts):
      out = ids.copy()
      hit = (rng.random(len(ids)) < p) & (ids != eos)  # documents stay whole
      out[hit] = rng.choice(used, size=int(hit.sum()))
      out.tofile(os.path.join(tmp, name, f"part-{i:05d}.npy"))
    counts[name] = int(sum(len(t) for t in train_parts))
  with open(os.path.join(tmp, "manifest.json"), "w") as f:
    json.dump({"levels": want, "seed": seed, "vocab": vocab, "train_tokens": counts,
               "heldout_fraction": HELDOUT_FRACTION}, f, indent=1)
  if os.path.isfile(manifest):  # another process finished first: keep its copy
    with open(manifest) as f:
      have = json.load(f)
    if set(want) <= set(have["levels"]) and have.get("vocab", 0) == vocab and \
        have["seed"] == seed:
      shutil.rmtree(tmp)
      return root
  shutil.rmtree(root, ignore_errors=True)
  os.replace(tmp, root)
  return root


# ---------------------------------------------------------------------------------------------
# A results table of known truth, for the report at the scale of the published grid

OLMES_TASKS = ("arc_challenge", "arc_easy", "boolq", "csqa", "hellaswag", "mmlu", "openbookqa",
               "piqa", "socialiqa", "winogrande")


def results_table(n_recipes: int = 25, sizes_=None, n_tasks: int = 10, seeds=None,
                  n_ckpt: int = 5, seed: int = 0, quality_spread: float = 0.12,
                  noise=(0.002, 0.03), growth: float = 1.0):
  """A results table with planted truth: 25 recipes x the 14 ladder sizes x 10 OLMES tasks.

  Recipe i has quality q_i = quality_spread * i / (n_recipes - 1): the LAST recipe of
  results.recipe_names() order is the best, recipe 0 the worst (the returned truth names
  the order). A recipe's effect grows with scale, as the DataDecide paper's claim needs (its
  proxies should get better at ranking as they grow): at compute C it is
  q_i * g(C), g = (u^growth) with u = log(C / C_min) / log(C_max / C_min) mapped to
  [0.05, 1] over the ladder (growth 0: the same effect at every size). Per task t, bpb at
  compute C is (3000 C^-0.2 + 1.9 + 0.3 t / n_tasks - q_i g(C)) * exp(e), e ~ N(0, sigma_t /
  4); acc_raw = 0.25 + 0.6 sigmoid(1.2 (2.6 - bpb)) + N(0, sigma_t), correct_prob = 0.2 + 0.7
  sigmoid(1.0 (2.5 - bpb)) + N(0, sigma_t / 3) per checkpoint and seed; the sigmoids are
  gentle over the ladder's bpb range (about 2.1 to 3.9), so a recipe's accuracy effect does not
  saturate away at the large sizes. sigma_t spans `noise` geometrically (task 0 the
  quietest). `seeds`: None = the published seeds of the small sizes (default, small aux 2,
  small aux 3). Returns (table, {"quality": {recipe: q}, "task_noise": {task: sigma},
  "best": the best recipe}).
  """
  import numpy as np
  import pandas as pd

  from olmo_jax import sizes
  from olmo_jax.datadecide import results as R
  if seeds is None:
    seeds = tuple(R.PUBLISHED_SEEDS[k] for k in ("default", "small aux 2", "small aux 3"))
  rng = np.random.default_rng(seed)
  recipes = R.recipe_names()[:n_recipes]
  tasks = OLMES_TASKS[:n_tasks]
  sigmas = np.geomspace(noise[0], noise[1], len(tasks))
  quality = {r: quality_spread * i / max(1, n_recipes - 1) for i, r in enumerate(recipes)}
  lo, hi = (np.log(float(R.ladder_compute(z, sizes.get_size(z).final_step)))
            for z in ("4M", "1B"))
  rows = []
  for z in (sizes_ or list(sizes.LADDER)):
    s = sizes.get_size(z)
    steps = [s.final_step * k // n_ckpt for k in range(1, n_ckpt + 1)]
    comp = np.array([R.ladder_compute(z, st) for st in steps], dtype=float)
    u = np.clip((np.log(comp) - lo) / (hi - lo), 0.0, 1.0)
    gain = 0.05 + 0.95 * u ** growth if growth > 0 else np.ones_like(u)
    for ti, (task, sig) in enumerate(zip(tasks, sigmas)):
      base = 3000.0 * comp ** -0.2 + 1.9 + 0.3 * ti / len(tasks)
      for r in recipes:
        for sd in seeds:
          bpb = (base - quality[r] * gain) * np.exp(rng.normal(0, sig / 4, n_ckpt))
          acc = 0.25 + 0.6 / (1 + np.exp(1.2 * (bpb - 2.6))) + rng.normal(0, sig, n_ckpt)
          cp = 0.2 + 0.7 / (1 + np.exp(1.0 * (bpb - 2.5))) + rng.normal(0, sig / 3, n_ckpt)
          for k, st in enumerate(steps):
            rows.append((r, z, sd, st, float(st * s.tokens_per_step), comp[k], task, bpb[k],
                         acc[k], cp[k]))
  wide = pd.DataFrame(rows, columns=["recipe", "size", "seed", "step", "tokens", "compute",
                                     "task", "bpb", "acc_raw", "correct_prob"])
  long = wide.melt(id_vars=list(R.COLUMNS[:7]), value_vars=["acc_raw", "bpb", "correct_prob"],
                   var_name="metric", value_name="value")
  return R.validate_table(long), {"quality": quality, "task_noise": dict(zip(tasks, sigmas)),
                                  "best": max(quality, key=quality.get)}
