"""Mixtures: proportions, determinism, process shards, epochs, resume in a fresh process, errors."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import built_plan

from data_pipeline import data_plan, mixture, recipe_config

VOCAB = 50304
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_source(directory, name, n_tokens, n_files=2, dtype="uint16"):
  """n_files token files whose ids encode (source, position): each window is identifiable."""
  os.makedirs(os.path.join(directory, name), exist_ok=True)
  base = {"a": 0, "b": 10000, "c": 20000, "d": 30000}.get(name, 40000)
  ids = base + (np.arange(n_tokens) % 9973)
  for i, part in enumerate(np.array_split(ids, n_files)):
    part.astype(dtype).tofile(os.path.join(directory, name, f"part-{i:05d}.npy"))


def custom_cfg(data_dir, sources, **kw):
  cfg = recipe_config.default_config()
  cfg.mixture = "custom"
  cfg.data_dir = str(data_dir)
  cfg.sources = sources
  for k, v in kw.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="module")
def three(tmp_path_factory):
  d = tmp_path_factory.mktemp("three")
  for name, n in (("a", 40000), ("b", 20000), ("c", 9000)):
    make_source(str(d), name, n)
  return d


def take(it, n):
  return np.stack([next(it)["input_ids"] for _ in range(n)])


def test_batches_have_the_trainer_contract(three):
  cfg = custom_cfg(three, "a=a/*.npy")
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=16, batch_size=4, seed=0,
                                    vocab_size=VOCAB)
  batch = next(it)
  assert set(batch) == {"input_ids"}
  assert batch["input_ids"].shape == (4, 17) and batch["input_ids"].dtype == np.int32
  json.dumps(it.get_state())


def test_unshuffled_single_source_is_olmo_order(three):
  cfg = custom_cfg(three, "a=a/*.npy", shuffle=False)
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=15, batch_size=3, seed=0,
                                    vocab_size=VOCAB)
  parts = [np.fromfile(os.path.join(three, "a", f"part-{i:05d}.npy"), np.uint16) for i in (0, 1)]
  ref = np.concatenate([p[:len(p) // 16 * 16].reshape(-1, 16) for p in parts])
  np.testing.assert_array_equal(take(it, 5).reshape(-1, 16), ref[:15])


def test_realised_proportions_match_weights(three):
  cfg = custom_cfg(three, "a=a/*.npy@0.5,b=b/*.npy@0.3,c=c/*.npy@0.2")
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=7, batch_size=100, seed=1,
                                    vocab_size=VOCAB)
  rows = take(it, 100).reshape(-1, 8)  # 10,000 instances
  labels = rows[:, 0] // 10000
  frac = np.bincount(labels, minlength=3) / len(labels)
  np.testing.assert_allclose(frac, [0.5, 0.3, 0.2], atol=0.01)


def test_same_seed_same_stream_other_seed_other_stream(three):
  cfg = custom_cfg(three, "a=a/*.npy@2,b=b/*.npy@1")
  kw = dict(seq_len=7, batch_size=8, vocab_size=VOCAB)
  x = take(mixture.build_train_iterator(built_plan(cfg), seed=5, **kw), 20)
  y = take(mixture.build_train_iterator(built_plan(cfg), seed=5, **kw), 20)
  z = take(mixture.build_train_iterator(built_plan(cfg), seed=6, **kw), 20)
  np.testing.assert_array_equal(x, y)
  assert not np.array_equal(x, z)


def test_process_shards_are_disjoint_and_cover(three):
  cfg = custom_cfg(three, "c=c/*.npy", prefetch=0)
  n_windows = 2 * (4500 // 10)  # two files of 4500 tokens, windows of 10
  kw = dict(seq_len=9, batch_size=5, seed=2, vocab_size=VOCAB, process_count=2)
  per = [take(mixture.build_train_iterator(built_plan(cfg), process_index=i, **kw), n_windows // 10)
         for i in range(2)]
  keys = [{tuple(r) for r in p.reshape(-1, 10)} for p in per]
  assert len(keys[0]) == len(keys[1]) == n_windows // 2  # no repeats within an epoch
  assert not keys[0] & keys[1]
  single = take(mixture.build_train_iterator(built_plan(custom_cfg(three, "c=c/*.npy")), seq_len=9,
                                             batch_size=10, seed=2, vocab_size=VOCAB),
                n_windows // 10)
  assert keys[0] | keys[1] == {tuple(r) for r in single.reshape(-1, 10)}
  # The global batch is the same whatever the number of processes.
  np.testing.assert_array_equal(np.concatenate([per[0][0], per[1][0]]), single[0])


def test_epochs_cover_every_window_once_then_reshuffle(three):
  cfg = custom_cfg(three, "c=c/*.npy")
  n = 2 * (4500 // 10)
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=9, batch_size=n // 10, seed=0,
                                    vocab_size=VOCAB)
  e0, e1 = take(it, 10).reshape(-1, 10), take(it, 10).reshape(-1, 10)
  assert len({tuple(r) for r in e0}) == n
  assert {tuple(r) for r in e0} == {tuple(r) for r in e1}
  assert not np.array_equal(e0, e1)
  cfg.max_epochs = 1
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=9, batch_size=n // 10, seed=0,
                                    vocab_size=VOCAB)
  take(it, 10)
  with pytest.raises(StopIteration):
    next(it)


_FRESH = """
import json, sys, numpy as np
import ml_collections
from data_pipeline import data_plan, mixture
args = json.load(open(sys.argv[1]))
cfg = ml_collections.ConfigDict(args["cfg"])
it = mixture.build_train_iterator(data_plan.resolve(cfg), **args["kw"])
it.set_state(json.load(open(args["state"])))
np.save(args["out"], np.stack([next(it)["input_ids"] for _ in range(args["n"])]))
"""


def resume_in_fresh_process(tmp_path, cfg, kw, k=7, n=50):
  """Batches k..k+n from an uninterrupted run, and from a fresh process restored after k."""
  it = mixture.build_train_iterator(built_plan(cfg), **kw)
  before = take(it, k)
  state = it.get_state()
  expected = take(it, n)
  (tmp_path / "state.json").write_text(json.dumps(state))
  args = {"cfg": cfg.to_dict(), "kw": kw, "state": str(tmp_path / "state.json"),
          "out": str(tmp_path / "resumed.npy"), "n": n}
  (tmp_path / "args.json").write_text(json.dumps(args))
  subprocess.run([sys.executable, "-c", _FRESH, str(tmp_path / "args.json")], check=True,
                 cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
  return before, expected, np.load(tmp_path / "resumed.npy")


def test_resume_token_files_in_fresh_process(three, tmp_path):
  cfg = custom_cfg(three, "a=a/*.npy")
  _, expected, resumed = resume_in_fresh_process(
      tmp_path, cfg, dict(seq_len=31, batch_size=4, seed=3, vocab_size=VOCAB))
  np.testing.assert_array_equal(resumed, expected)


def test_resume_mixture_in_fresh_process(three, tmp_path):
  cfg = custom_cfg(three, "a=a/*.npy@0.6,b=b/*.npy@0.3,c=c/*.npy@0.1")
  # Small windows and source c force several epochs of c within the 57 batches.
  _, expected, resumed = resume_in_fresh_process(
      tmp_path, cfg, dict(seq_len=63, batch_size=16, seed=4, vocab_size=VOCAB,
                          process_index=1, process_count=2))
  np.testing.assert_array_equal(resumed, expected)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("text")
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "data", "pipeline", "token", "window", "Grain"]
  for f in range(2):
    with gzip.open(d / f"docs-{f}.jsonl.gz", "wt") as out:
      for _ in range(60):
        text = " ".join(rng.choice(words, rng.integers(3, 40)))
        out.write(json.dumps({"text": text}) + "\n")
  make_source(str(d), "a", 30000)
  return d


def test_resume_jsonl_text_packing_in_fresh_process(text_dir, tmp_path):
  cfg = custom_cfg(text_dir, "t=docs-*.jsonl.gz")
  before, expected, resumed = resume_in_fresh_process(
      tmp_path, cfg, dict(seq_len=31, batch_size=4, seed=3, vocab_size=VOCAB))
  np.testing.assert_array_equal(resumed, expected)
  # Packing: EOS separates documents inside rows.
  assert (np.concatenate([before, expected]) == 50279).any()


def test_resume_text_and_token_mixture_in_fresh_process(text_dir, tmp_path):
  cfg = custom_cfg(text_dir, "t=docs-*.jsonl.gz@0.5,a=a/*.npy@0.5")
  _, expected, resumed = resume_in_fresh_process(
      tmp_path, cfg, dict(seq_len=15, batch_size=6, seed=8, vocab_size=VOCAB))
  np.testing.assert_array_equal(resumed, expected)


def test_state_from_another_setup_is_refused(three):
  cfg = custom_cfg(three, "a=a/*.npy")
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=7, batch_size=4, seed=0,
                                    vocab_size=VOCAB)
  next(it)
  state = it.get_state()
  other = mixture.build_train_iterator(built_plan(cfg), seq_len=7, batch_size=8, seed=0,
                                       vocab_size=VOCAB)
  with pytest.raises(ValueError, match="batch_size"):
    other.set_state(state)


def test_synthetic_mixture_keeps_its_numbers():
  cfg = recipe_config.default_config()
  assert recipe_config.mixture_name(cfg) == "synthetic"  # the default without a data directory
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=8, batch_size=2, seed=0,
                                    vocab_size=1000)
  first = next(it)["input_ids"]
  rng = np.random.default_rng(0)
  pattern = rng.integers(2, 1000, size=61, dtype=np.int64)
  offsets = np.random.default_rng([0, 0, 0]).integers(0, 61, size=2)
  idx = (offsets[:, None] + np.arange(9)[None, :]) % 61
  np.testing.assert_array_equal(first, pattern[idx].astype(np.int32))
  assert it.get_state() == {"step": 1}


@pytest.mark.parametrize("sources,exc,match", [
    ("a=a/*.npy@-1", ValueError, "'a'.*weight must be a finite number >= 0"),
    ("a=a/*.npy@0,b=b/*.npy@0", ValueError, "all source weights are zero"),
    ("a=a/*.npy@x", ValueError, "weight 'x' of source 'a'"),
    ("a=nope/*.npy", FileNotFoundError, "source 'a'.*nope"),
    ("", ValueError, "data.sources is empty"),
])
def test_bad_source_configs(three, sources, exc, match):
  with pytest.raises(exc, match=match):
    data_plan.validate_config(custom_cfg(three, sources), VOCAB)


def test_config_errors_name_the_field(three, tmp_path):
  cfg = custom_cfg(three, "a=a/*.npy", drop_sources="zzz")
  with pytest.raises(ValueError, match="drop_sources: unknown source 'zzz'"):
    data_plan.validate_config(cfg, VOCAB)
  cfg = recipe_config.default_config()
  cfg.mixture = "not-a-recipe"
  with pytest.raises(ValueError, match="not-a-recipe.*known:.*dolma17"):
    data_plan.validate_config(cfg, VOCAB)
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.sources = "c4", "a=a/*.npy"
  with pytest.raises(ValueError, match="data.sources is only read when data.mixture='custom'"):
    data_plan.validate_config(cfg, VOCAB)
  odd = tmp_path / "odd"
  odd.mkdir()
  (odd / "x.npy").write_bytes(b"\0\0\0")
  with pytest.raises(ValueError, match="x.npy.*not a multiple of uint16"):
    data_plan.validate_config(custom_cfg(tmp_path, "x=odd/*.npy"), VOCAB)


def test_token_ids_beyond_vocab_fail_the_batch(tmp_path):
  os.makedirs(tmp_path / "v")
  np.full(100, 60000, np.uint16).tofile(tmp_path / "v" / "p.npy")
  it = mixture.build_train_iterator(built_plan(custom_cfg(tmp_path, "v=v/*.npy", prefetch=0)),
                                    seq_len=9,
                                    batch_size=2, seed=0, vocab_size=50280)
  with pytest.raises(ValueError, match=r"60000 >= vocab_size 50280 in .*p.npy"):
    next(it)


@pytest.mark.parametrize("name", ["dolma17", "no_reddit", "c4", "DCLM-baseline",
                                  "dolma17-75p-DCLM-baseline-25p", "falcon_and_cc"])
def test_datadecide_recipes_without_data_name_the_missing_path(tmp_path, name):
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir = name, str(tmp_path)
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    data_plan.validate_config(cfg, VOCAB)


def test_all_25_datadecide_recipes_resolve():
  directory = recipe_config.recipes_dir(recipe_config.default_config())
  names = [n for n in recipe_config.known_recipes(directory)
           if n != "sample" and not n.startswith("curation_")]
  assert len(names) == 25
  for name in names:
    specs = recipe_config.flatten_recipe(recipe_config.load_recipe(name, directory), directory)
    assert specs and all(s.weight >= 0 for s in specs.values())
  blend = recipe_config.flatten_recipe(
      recipe_config.load_recipe("dolma17-75p-DCLM-baseline-25p", directory), directory)
  total = sum(s.weight for s in blend.values())
  assert blend["dclm_baseline"].weight / total == pytest.approx(0.25)
  no_code = recipe_config.flatten_recipe(recipe_config.load_recipe("no_code", directory), directory)
  assert "starcoder" not in no_code and "reddit" in no_code


def test_recipe_mixture_over_token_files(tmp_path):
  """A recipe file with nested recipes and an ablation, over real files."""
  rdir = tmp_path / "recipes"
  rdir.mkdir()
  (rdir / "base.py").write_text(
      "import ml_collections as m\n"
      "def get_config():\n"
      "  return m.ConfigDict({'name': 'base', 'sources': {\n"
      "    'a': {'kind': 'tokens', 'paths': 'a/*.npy', 'weight': 3.0},\n"
      "    'b': {'kind': 'tokens', 'paths': 'b/*.npy', 'weight': 1.0}}})\n")
  (rdir / "blend.py").write_text(
      "import ml_collections as m\n"
      "def get_config():\n"
      "  return m.ConfigDict({'name': 'blend', 'base': 'base', 'drop': ['b'], 'sources': {\n"
      "    'c': {'kind': 'tokens', 'paths': 'c/*.npy', 'weight': 1.0}}})\n")
  for name in "abc":
    make_source(str(tmp_path), name, 8000)
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir, cfg.recipes_dir = "blend", str(tmp_path), str(rdir)
  it = mixture.build_train_iterator(built_plan(cfg), seq_len=7, batch_size=100, seed=0,
                                    vocab_size=VOCAB)
  labels = take(it, 40).reshape(-1, 8)[:, 0] // 10000
  frac = np.bincount(labels, minlength=3) / len(labels)
  np.testing.assert_allclose(frac, [0.75, 0, 0.25], atol=0.01)
