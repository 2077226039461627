"""A data directory named on the command line is what the trainer reads, or a clear error.

Every case runs `python -m olmo_jax.train ... --config.data.data_dir=DIR` in a subprocess.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, built_plan

from data_pipeline import data_plan, mixture, recipe_config

TINY = [
    "--config.model.size=custom", "--config.model.d_model=32", "--config.model.n_heads=2",
    "--config.model.n_layers=2", "--config.model.vocab_size=500",
    "--config.model.embedding_size=512", "--config.train.batch_size=4",
    "--config.train.seq_len=16", "--config.train.warmup_steps=1", "--config.train.steps=2",
    "--config.train.log_every=1", "--config.train.progress_bar=False",
    "--config.checkpoint.enabled=False",
]


def train(workdir, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, "-m", "olmo_jax.train", "--config", f"{REPO}/configs/train.py:4M",
       "--workdir", str(workdir), *TINY, *overrides],
      capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Two directories of token files (ids < 500): web 6,000 tokens in 2 files, code 2,000."""
  d = tmp_path_factory.mktemp("corpus")
  for name, sizes in (("web", (4000, 2000)), ("code", (2000,))):
    os.makedirs(d / name)
    for i, n in enumerate(sizes):
      (np.arange(n) % 499).astype(np.uint16).tofile(d / name / f"part-{i:05d}.npy")
  (d / "web" / "index.json").write_text("{}")  # tokenizer metadata is not a token file
  return d


def test_data_dir_without_recipe_trains_on_every_token_file(corpus, tmp_path):
  proc = train(tmp_path / "run", f"--config.data.data_dir={corpus}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  table = proc.stdout[proc.stdout.index("data: mixture 'all'"):].splitlines()[:5]
  rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
  assert rows["web"] == ["tokens", "2", "6,000", "0.7500"]
  assert rows["code"] == ["tokens", "1", "2,000", "0.2500"]
  assert rows["total"] == ["3", "8,000", "1.0000"]
  steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert steps == [1, 2]


@pytest.mark.parametrize("case,message", [
    ("missing", "data.data_dir=.*missing: no such directory"),
    ("no_tokens", "holds no token files"),
    ("synthetic", "data.mixture='synthetic' reads no files, but data.data_dir="),
])
def test_data_dir_mistakes_exit_2_naming_the_fix(corpus, tmp_path, case, message):
  if case == "missing":
    args = [f"--config.data.data_dir={tmp_path / 'missing'}"]
  elif case == "no_tokens":
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "docs.jsonl").write_text('{"text": "not tokenized yet"}\n')
    args = [f"--config.data.data_dir={tmp_path / 'raw'}"]
  else:
    args = [f"--config.data.data_dir={corpus}", "--config.data.mixture=synthetic"]
  proc = train(tmp_path / "run", *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert re.search(message, proc.stderr), proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_directory_sources_mix_by_tokens(corpus):
  cfg = recipe_config.default_config()
  cfg.data_dir = str(corpus)
  assert recipe_config.mixture_name(cfg) == "all"
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=15, batch_size=64, seed=0,
                                    vocab_size=500)
  first = np.stack([next(it)["input_ids"] for _ in range(20)]).reshape(-1, 16)
  assert first.max() < 499 and len(first) == 1280
  state = json.loads(it.get_state()["fingerprint"])
  assert state["mixture"] == "all"
  assert {k: v[0] for k, v in state["sources"].items()} == {"code": 2000.0, "web": 6000.0}


def test_unknown_data_config_key_is_named():
  cfg = recipe_config.default_config()
  cfg.max_epoch = 1  # a typo of max_epochs
  with pytest.raises(ValueError, match="data.max_epoch is not a known field"):
    data_plan.validate_config(cfg, 500)
  with pytest.raises(ValueError, match=r"data.shuffle='yes' must be a bool"):
    recipe_config.data_config({"shuffle": "yes"})
