"""Curated sources made at tokenisation: bytes, accounting, caching, recipes, the commands."""

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import built_plan
from curation_fixtures import BAD, edit_one_word, good_doc, write_jsonl

from data_pipeline import curation, data_plan, materialize, mixture, recipe_config, tokenization
from data_pipeline import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHAIN = [{"step": "exact_dedup"}, {"step": "minhash_dedup", "threshold": 0.85},
         {"step": "gopher_quality"}, {"step": "gopher_repetition"},
         {"step": "subsample", "mode": "diversity", "fraction": 0.8, "clusters": 3}]


@pytest.fixture
def raw(tmp_path):
  d = tmp_path / "raw"
  d.mkdir()
  a = [good_doc(i) for i in range(20)]
  b = [good_doc(100 + i) for i in range(20)] + [a[3], edit_one_word(a[7])] + list(BAD.values())
  write_jsonl(d / "a.jsonl", [{"text": t, "q": i} for i, t in enumerate(a)])
  with gzip.open(d / "b.jsonl.gz", "wt") as f:
    for i, t in enumerate(b):
      f.write(json.dumps({"text": t, "q": 100 + i}) + "\n")
  return d, a, b


def test_curated_tokenization_writes_kept_documents_and_accounting(raw, tmp_path):
  d, a, b = raw
  out = str(tmp_path / "out")
  index = tokenization.run([str(d / "*")], out, workers=1, progress=False, chain=CHAIN[:4])
  cur = index["curation"]
  assert [r["step"] for r in cur["steps"]] == [s["step"] for s in CHAIN[:4]]
  assert [r["documents_dropped"] for r in cur["steps"]] == [1, 1, len(BAD), 0]
  assert cur["documents_in"] == len(a) + len(b)
  assert index["documents"] == len(a) + 20
  tok = tokenizer_lib.load_tokenizer()
  eos = tokenizer_lib.EOS_TOKEN_ID
  want_b = np.concatenate([tok.encode(t, add_special_tokens=False).ids + [eos] for t in b[:20]])
  np.testing.assert_array_equal(np.fromfile(os.path.join(out, "part-00001.npy"), np.uint16),
                                want_b)
  for r in cur["steps"]:
    assert r["documents_in"] == r["documents_kept"] + r["documents_dropped"]
    assert r["tokens_in"] == r["tokens_kept"] + r["tokens_dropped"]
    assert sum(v["tokens"] for v in r["reasons"].values()) == r["tokens_dropped"]
  assert cur["steps"][-1]["tokens_kept"] == index["tokens"]
  # The training side reads them as plain token files.
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir, cfg.sources = "custom", str(tmp_path), "c=out/*.npy"
  batch = next(mixture.build_train_iterator(built_plan(cfg), seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 16)


def _shard_bytes(out):
  return {n: open(os.path.join(out, n), "rb").read() for n in sorted(os.listdir(out))
          if n.endswith(".npy")}


def test_same_inputs_and_chain_give_identical_token_files_with_1_or_n_workers(raw, tmp_path):
  d, _, _ = raw
  outs = []
  for k, workers in enumerate((1, 1, 2)):
    out = str(tmp_path / f"out{k}")
    tokenization.run([str(d / "*")], out, workers=workers, progress=False, chain=CHAIN)
    outs.append(_shard_bytes(out))
  assert outs[0] == outs[1] == outs[2] and outs[0]


def test_chain_runs_are_byte_identical_and_reused(raw, tmp_path):
  d, _, _ = raw
  a = tokenization.run([str(d / "*")], str(tmp_path / "a"), progress=False, chain=CHAIN)
  b = tokenization.run([str(d / "*")], str(tmp_path / "b"), progress=False, chain=CHAIN)
  assert _shard_bytes(str(tmp_path / "a")) == _shard_bytes(str(tmp_path / "b"))
  assert a["curation"]["key"] == b["curation"]["key"]
  stamp = os.path.getmtime(tmp_path / "a" / "part-00000.npy")
  again = tokenization.run([str(d / "*")], str(tmp_path / "a"), progress=False, chain=CHAIN)
  assert os.path.getmtime(tmp_path / "a" / "part-00000.npy") == stamp
  assert again == a


RECIPES = '''
from data_pipeline.curation import curated_source
import ml_collections

CHAINS = {{"raw": [], "dedup": [{{"step": "exact_dedup"}}],
          "dedup_rules": [{{"step": "exact_dedup"}}, {{"step": "gopher_quality"}}]}}


def recipe_names():
  return ["cur_" + k for k in CHAINS] + ["cur_dedup_again"]


def get_config(name):
  c = ml_collections.ConfigDict()
  c.name = name
  chain = CHAINS["dedup" if name == "cur_dedup_again" else name[4:]]
  c.sources = ml_collections.ConfigDict()
  c.sources.web = curated_source("raw/*", chain, weight={weight})
  return c
'''


def test_recipes_materialise_once_per_chain_and_train(raw, tmp_path):
  d, a, b = raw
  recipes = tmp_path / "recipes"
  recipes.mkdir()
  (recipes / "cur.py").write_text(RECIPES.format(weight=1.0))
  data_dir = str(tmp_path)
  first = materialize.materialize_recipe("cur_dedup", data_dir, recipes_dir=str(recipes),
                                         progress=False)
  out, index = first["web"]
  assert index["documents"] == len(a) + len(b) - 1
  stamp = os.path.getmtime(os.path.join(out, "part-00000.npy"))
  second = materialize.materialize_recipe("cur_dedup_again", data_dir,
                                          recipes_dir=str(recipes), progress=False)
  assert second["web"][0] == out  # same inputs, chain and tokenizer: same files, reused
  assert os.path.getmtime(os.path.join(out, "part-00000.npy")) == stamp
  other = materialize.materialize_recipe("cur_dedup_rules", data_dir,
                                         recipes_dir=str(recipes), progress=False)
  assert other["web"][0] != out
  assert other["web"][1]["documents"] == len(a) + len(b) - 1 - len(BAD)
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir, cfg.recipes_dir = "cur_dedup_rules", data_dir, str(recipes)
  batch = next(mixture.build_train_iterator(built_plan(cfg), seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 16)


def test_a_recipes_curated_sources_are_built_by_materialize_not_by_the_reader(raw, tmp_path):
  recipes = tmp_path / "recipes"
  recipes.mkdir()
  (recipes / "cur.py").write_text(RECIPES.format(weight=1.0))
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir, cfg.recipes_dir = "cur_dedup", str(tmp_path), str(recipes)
  data_plan.validate_config(cfg, 50304)  # inputs exist; the token files are made later
  plan = data_plan.resolve(cfg)
  # the start-up table (train.py prints it before building the data) must not need them
  assert data_plan.describe(plan).endswith("curated source(s) web built on first use")
  unbuilt = ("curated source 'web' of data.mixture='cur_dedup' is not built yet; training builds "
             "it first (data_pipeline.materialize.materialize(plan)), or build it with `python -m "
             "data_pipeline.tokenize_files --recipe cur_dedup")
  with pytest.raises(ValueError, match=re.escape(unbuilt)):
    mixture.build_train_iterator(plan, seq_len=15, batch_size=2, seed=0, vocab_size=50304)
  materialize.materialize(plan)
  first = next(mixture.build_train_iterator(plan, seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  built = materialize.materialize_recipe("cur_dedup", str(tmp_path), recipes_dir=str(recipes),
                                         progress=False)
  shard = os.path.join(built["web"][0], "part-00000.npy")
  stamp = os.path.getmtime(shard)
  materialize.materialize(plan)
  again = next(mixture.build_train_iterator(plan, seq_len=15, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert os.path.getmtime(shard) == stamp  # reused, not rebuilt
  assert "web " in data_plan.describe(plan).splitlines()[2]  # now listed with its tokens
  np.testing.assert_array_equal(first["input_ids"], again["input_ids"])
  cfg.data_dir = str(tmp_path / "elsewhere")
  with pytest.raises(FileNotFoundError, match="curated source 'web'"):
    data_plan.validate_config(cfg, 50304)


# ------------------------------------------------------------------------------------------
# Bad input: one clear error, exit 2, nothing written. Run as the README prints the commands.


def cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("chain, records, expect", [
    ([{"step": "top_p", "fraction": 0.1, "field": "q"}], "some_missing_q",
     "score field 'q' is missing or not a finite number in 1 of"),
    ([{"step": "dedupe"}], None, "unknown curation step 'dedupe'"),
    ([{"step": "exact_dedup", "threshold": 0.5}], None,
     "curation step 'exact_dedup': unknown parameter(s) ['threshold']"),
    ([{"step": "subsample", "mode": "diversity"}], None, "give exactly one budget"),
    ([{"step": "minhash_dedup", "threshold": 1.5}], None,
     "minhash_dedup': threshold must be a number in (0, 1], got 1.5"),
    ([{"step": "gopher_quality", "max_symbol_word_ratio": -0.1}], None,
     "max_symbol_word_ratio must be a number in [0, 1]"),
    ([{"step": "top_p", "fraction": 0.1, "fasttext": "CLASSIFIER"}], None,
     "does not load"),
    ([{"step": "top_p", "fraction": 0.1, "attributes": "ATTRS", "attribute": "qc"}], None,
     "has 2 lines but"),
])
def test_bad_input_is_one_clear_error_exit_2_and_no_output(tmp_path, chain, records, expect):
  docs = [{"text": good_doc(i), "q": i} for i in range(4)]
  if records == "some_missing_q":
    del docs[2]["q"]
  path = write_jsonl(tmp_path / "docs.jsonl", docs)
  bad_model = tmp_path / "qc.bin"
  bad_model.write_bytes(b"not a fasttext model at all")
  write_jsonl(tmp_path / "attrs.jsonl", [{"attributes": {"qc": 0.5}}] * 2)
  chain_text = (json.dumps(chain).replace("CLASSIFIER", str(bad_model))
                .replace("ATTRS", str(tmp_path / "attrs.jsonl")))
  out = tmp_path / "out"
  proc = cli("data_pipeline.tokenize_files", "--inputs", path, "--output", str(out), "--chain",
             chain_text, "--workers", "1")
  assert proc.returncode == 2, proc.stderr
  assert expect in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not out.exists()


def test_cli_chain_file_and_inspect_print_the_accounting(raw, tmp_path):
  d, _, _ = raw
  chain_file = tmp_path / "chain.json"
  chain_file.write_text(json.dumps(CHAIN[:3]))
  out = tmp_path / "tok"
  proc = cli("data_pipeline.tokenize_files", "--inputs", str(d / "*.jsonl*"), "--output", str(out),
             "--chain", str(chain_file), "--workers", "1")
  assert proc.returncode == 0, proc.stderr
  proc = cli("data_pipeline.inspect_tokens", str(out))
  assert proc.returncode == 0, proc.stderr
  text = proc.stdout
  assert "curation: exact_dedup > minhash_dedup(threshold=0.85) > gopher_quality" in text
  index = json.loads((out / "index.json").read_text())
  for r in index["curation"]["steps"]:
    row = next(line for line in text.splitlines() if line.startswith(r["step"] + " "))
    assert row.split()[1:4] == [str(r["documents_in"]), str(r["documents_kept"]),
                                str(r["documents_dropped"])]
  assert "dropped  " in text and "[exact_duplicate: same text as" in text
  assert "[gopher_short_doc" in text and "kept     " in text
  plain = tmp_path / "plain"
  tokenization.run([str(d / "a.jsonl")], str(plain), progress=False)
  proc = cli("data_pipeline.inspect_tokens", str(plain))
  assert proc.returncode == 0 and "curation: none" in proc.stdout
  assert "20 documents" in proc.stdout
  proc = cli("data_pipeline.inspect_tokens", str(tmp_path / "nothing"))
  assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_cli_recipe_materialises_curated_sources(raw, tmp_path):
  recipes = tmp_path / "recipes"
  recipes.mkdir()
  (recipes / "cur.py").write_text(RECIPES.format(weight=1.0))
  args = ("data_pipeline.tokenize_files", "--recipe", "cur_dedup", "--data_dir", str(tmp_path),
          "--recipes_dir", str(recipes), "--workers", "1")
  proc = cli(*args)
  assert proc.returncode == 0, proc.stderr
  assert "web: " in proc.stdout and "(exact_dedup) -> " in proc.stdout
  out = proc.stdout.split(" -> ")[-1].strip()
  assert os.path.isfile(os.path.join(out, "part-00000.npy"))
  proc = cli("data_pipeline.tokenize_files", "--recipe", "no_such_recipe", "--data_dir",
             str(tmp_path), "--recipes_dir", str(recipes))
  assert proc.returncode == 2 and "not a known recipe" in proc.stderr


def test_shipped_curation_recipes_name_their_chains():
  directory = recipe_config.recipes_dir(recipe_config.default_config())
  names = [n for n in recipe_config.known_recipes(directory) if n.startswith("curation_")]
  assert set(names) == {"curation_raw", "curation_dedup", "curation_dedup_rules",
                        "curation_dedup_rules_diverse50", "curation_qc_top10"}
  dirs = {}
  for name in names:
    specs = materialize.curated_specs(name, "data", directory)
    (spec,) = specs.values()
    steps = curation.parse_chain(json.loads(spec.curation.chain))  # every chain is valid
    assert spec.paths == spec.curation.output + "/*.npy"
    dirs[name] = spec.curation.output
    assert recipe_config.load_recipe(name, directory).description.endswith(
        curation.describe_chain(curation.chain_spec(steps)))
  assert len(set(dirs.values())) == len(names)  # different chains, different files


@pytest.mark.slow
def test_shipped_recipe_materialises_from_the_command_line(tmp_path):
  proc = cli("data_pipeline.tokenize_files", "--recipe", "curation_dedup", "--data_dir",
             str(tmp_path), "--workers", "2")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.strip().split(" -> ")[-1]
  proc = cli("data_pipeline.inspect_tokens", out)
  assert proc.returncode == 0 and "minhash_dedup" in proc.stdout
  cfg = recipe_config.default_config()
  cfg.mixture, cfg.data_dir = "curation_dedup", str(tmp_path)
  batch = next(mixture.build_train_iterator(built_plan(cfg), seq_len=63, batch_size=2, seed=0,
                                            vocab_size=50304))
  assert batch["input_ids"].shape == (2, 64)
