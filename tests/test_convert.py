"""scripts/convert_to_hf.py and scripts/convert_from_hf.py: logits, lm-eval, and round trips."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from hf_fixtures import hf_random_model, max_diff, random_params
from test_hf import write_hf_olmo

from olmo_jax import checkpoint, checkpoint_manager, hf, hf_import, optim
from olmo_jax import config as config_lib
from olmo_jax.model import forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


to_hf = load_script("convert_to_hf")
from_hf = load_script("convert_from_hf")


def tiny_train_config():
  """A resolved training config of a d=64, 2-layer ladder model with the real vocabulary."""
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "train.py"), "4M")
  c.model.size = "custom"
  c.model.d_model, c.model.n_heads, c.model.n_layers = 64, 4, 2
  c.train.steps, c.train.batch_size, c.train.warmup_steps = 10, 4, 2
  return config_lib.resolve(c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir whose checkpoint holds a full train state (params + AdamW state) at step 7."""
  workdir = str(tmp_path_factory.mktemp("run"))
  cfg = tiny_train_config()
  mcfg = config_lib.model_config(cfg)
  params = random_params(mcfg)
  tx = optim.make_optimizer(peak_lr=1e-3, warmup_steps=2, total_steps=10)
  state = {"step": np.int32(7), "params": params, "opt_state": jax.jit(tx.init)(params),
           "rng": np.zeros(2, np.uint32)}
  ckpt = checkpoint_manager.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=1,
                                 async_save=False,
                                 metadata={"config": config_lib.to_dict(cfg),
                                           "tokenizer_hash": None})
  ckpt.save(7, state, {"position": 3})
  ckpt.close()
  return workdir, mcfg, params


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  workdir, mcfg, params = trained
  out = str(tmp_path_factory.mktemp("hf"))
  assert to_hf.main(["--checkpoint", workdir, "--output", out]) == 0
  return out


def test_export_loads_in_transformers_with_the_same_logits(trained, exported, capsys):
  import torch
  import transformers
  _, mcfg, params = trained
  model = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
  assert type(model).__name__ == "LlamaForCausalLM"
  assert max_diff(model.eval(), mcfg, params) < 1e-4  # real text, short batch + 512-token row
  tok = transformers.AutoTokenizer.from_pretrained(exported)
  assert tok("Hello world")["input_ids"] == [12092, 1533]


def test_bfloat16_export_verifies_and_bad_paths_fail_cleanly(trained, exported, tmp_path,
                                                             capsys):
  workdir, _, _ = trained
  step_dir = os.path.join(workdir, "checkpoints", "7")
  assert to_hf.main(["--checkpoint", step_dir, "--output", str(tmp_path / "hf"),
                     "--dtype", "bfloat16"]) == 0
  assert "verified: max |logit diff|" in capsys.readouterr().out
  assert json.load(open(tmp_path / "hf" / "config.json"))["torch_dtype"] == "bfloat16"
  missing = str(tmp_path / "nope")
  assert to_hf.main(["--checkpoint", missing, "--output", str(tmp_path / "x")]) == 2
  assert f"checkpoint path {missing} does not exist" in capsys.readouterr().err
  assert from_hf.main(["--hf", missing, "--output", str(tmp_path / "y")]) == 2
  assert missing in capsys.readouterr().err
  assert to_hf.main(["--checkpoint", exported, "--output", str(tmp_path / "z")]) == 2
  assert f"--checkpoint {exported} is an HF directory already" in capsys.readouterr().err


@pytest.mark.slow
def test_conversion_cli_runs_as_a_script(trained, tmp_path):
  workdir, _, _ = trained
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "scripts/convert_to_hf.py", "--checkpoint",
                         os.path.join(workdir, "checkpoints", "7"), "--output",
                         str(tmp_path / "hf"), "--dtype", "bfloat16"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "verified: max |logit diff|" in proc.stdout
  assert json.load(open(tmp_path / "hf" / "config.json"))["torch_dtype"] == "bfloat16"


TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""
DOCS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red"],
     "label": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "ten"],
     "label": 1},
    {"question": "Which animal says moo?", "choices": ["cat", "dog", "cow", "a small bird"],
     "label": 2},
]


def our_loglikelihood(mcfg, params, tok, context: str, continuation: str) -> float:
  """Sum of log p(continuation | context) with our forward, split as lm-eval's HF model does."""
  n = len(context) - len(context.rstrip())
  if n:  # trailing spaces of the context belong to the continuation
    context, continuation = context[:-n], context[-n:] + continuation
  whole = tok.encode(context + continuation).ids
  ctx = tok.encode(context).ids
  cont = whole[len(ctx):]
  ids = np.array([whole[:-1]], np.int32)
  logp = jax.nn.log_softmax(forward(mcfg, params, ids)[0], axis=-1)
  rows = np.arange(len(ctx) - 1, len(whole) - 1)
  return float(np.asarray(logp)[rows, cont].sum())


def test_lm_eval_runs_offline_and_its_loglikelihoods_equal_ours(trained, exported, tmp_path):
  import tokenizers
  _, mcfg, params = trained
  data = tmp_path / "docs.jsonl"
  data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data))
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             HF_DATASETS_CACHE=str(tmp_path / "ds_cache"))
  lm_eval = os.path.join(os.path.dirname(sys.executable), "lm-eval")
  proc = subprocess.run(
      [lm_eval, "run", "--model", "hf", "--model_args", f"pretrained={exported},dtype=float32",
       "--tasks", "tiny_mc", "--include_path", str(tmp_path / "tasks"), "--device", "cpu",
       "--batch_size", "1", "--log_samples", "--output_path", str(tmp_path / "out")],
      env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  samples = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "out") for f in fs
             if f.startswith("samples_tiny_mc")]
  assert len(samples) == 1
  rows = [json.loads(line) for line in open(samples[0])]
  assert len(rows) == len(DOCS)
  tok = tokenizers.Tokenizer.from_file(os.path.join(exported, "tokenizer.json"))
  n_requests = 0
  for row in rows:
    for i, args in enumerate(row["arguments"].values()):
      theirs = float(row["resps"][i][0][0])
      ours = our_loglikelihood(mcfg, params, tok, args["arg_0"], args["arg_1"])
      assert abs(theirs - ours) < 1e-4, (args, theirs, ours)
      n_requests += 1
  assert n_requests == sum(len(d["choices"]) for d in DOCS)


def test_from_hf_round_trip_gives_a_params_checkpoint(trained, exported, tmp_path):
  _, mcfg, params = trained
  out = str(tmp_path / "from_hf")
  assert from_hf.main(["--hf", exported, "--output", out]) == 0
  restored, meta = checkpoint.restore_params(out)
  assert meta["kind"] == "params" and meta["source"] == os.path.abspath(exported)
  import ml_collections
  assert config_lib.model_config(ml_collections.ConfigDict(meta["config"])) == mcfg
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert checkpoint_manager.Checkpointer(os.path.join(out, "checkpoints"), every=1,
                                 keep=1).latest_step() is None  # a fresh run starts from it
  init = checkpoint.load_init_params(out)
  for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # ... and exporting it again gives the same HF model.
  assert to_hf.main(["--checkpoint", out, "--output", str(tmp_path / "again")]) == 0


def test_from_hf_reads_allenai_hf_olmo_layout(tmp_path):
  model = hf_random_model("ladder")
  write_hf_olmo(model, "ladder", str(tmp_path / "hf_olmo"))
  out = str(tmp_path / "run")
  assert from_hf.main(["--hf", str(tmp_path / "hf_olmo"), "--output", out]) == 0
  params, meta = checkpoint.restore_params(out)
  import ml_collections
  mcfg = config_lib.model_config(ml_collections.ConfigDict(meta["config"]))
  assert max_diff(model, mcfg, params, long=False) < 1e-4


# ----------------------------------------------------------------------------------------
# Conversion never clobbers, and damaged weights are named


def _run_script(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_convert_to_hf_refuses_a_non_empty_output_unless_overwrite(trained, exported, tmp_path):
  workdir, _, _ = trained
  out = tmp_path / "hf"
  out.mkdir()
  # What an earlier, different export may leave: shards where there is now one file.
  stale = {"model-00001-of-00002.safetensors": "old", "notes.txt": "mine"}
  for name, text in stale.items():
    (out / name).write_text(text)
  proc = _run_script("scripts/convert_to_hf.py", "--checkpoint", workdir, "--output", str(out))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
      f"error: --output {out} is not empty; pass --overwrite to replace it"]
  assert {p.name: p.read_text() for p in out.iterdir()} == stale
  # What kill -9 during an export leaves beside the output: its temporary directories. The
  # next conversion (holding the output's lock, so no live one can own them) removes them.
  junk = tmp_path / ".hf.tmp-k1ll3d"
  junk.mkdir()
  (junk / "model.safetensors").write_bytes(b"\0" * (1 << 20))
  (tmp_path / ".hf.tmp-k1ll3d.old").mkdir()
  # (The `exported` fixture ran the verification through the same temporary directory.)
  proc = _run_script("scripts/convert_to_hf.py", "--checkpoint", workdir, "--output", str(out),
                     "--overwrite", "--no-verify")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"removed {junk} (1.0 MiB), left by a conversion that was killed" in proc.stdout
  assert f"removed {junk}.old (0.0 MiB)" in proc.stdout
  # Every file of the export has the mode of an ordinary new file (0644 under umask 022).
  mask = os.umask(0)
  os.umask(mask)
  assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
      p.name: oct(0o666 & ~mask) for p in out.iterdir()}
  assert sorted(p.name for p in out.iterdir()) == sorted(os.listdir(exported))
  for name in ("model.safetensors", "config.json", "tokenizer.json"):
    assert (out / name).read_bytes() == open(os.path.join(exported, name), "rb").read()
  # No temporary left beside it; only the (released, empty) lock of the output.
  assert sorted(p.name for p in tmp_path.iterdir()) == [".hf.lock", "hf"]
  assert (tmp_path / ".hf.lock").read_text() == ""


def test_truncated_safetensors_is_one_error_line_naming_the_file(exported, tmp_path):
  damaged = tmp_path / "damaged"
  shutil.copytree(exported, damaged)
  weights = damaged / "model.safetensors"
  data = weights.read_bytes()
  for cut in (len(data) // 2, 5):
    weights.write_bytes(data[:cut])
    with pytest.raises(hf.ConversionError, match=f"weights file {weights} cannot be read"):
      hf_import.import_hf(str(damaged))
  weights.write_bytes(data[:len(data) // 2])
  proc = _run_script("scripts/convert_from_hf.py", "--hf", str(damaged), "--output",
                     str(tmp_path / "run"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: weights file {weights} cannot be read")
  assert "truncated or damaged" in lines[0] and "Traceback" not in proc.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def _as_bin(exported, directory, tensors, **save_kw):
  """An HF directory like `exported` whose weights are `tensors` in a pytorch_model.bin."""
  import torch
  os.makedirs(directory)
  for name in os.listdir(exported):
    if not name.endswith(".safetensors"):
      shutil.copy(os.path.join(exported, name), directory)
  torch.save(tensors, os.path.join(directory, "pytorch_model.bin"), **save_kw)


def test_legacy_bin_converts_and_an_unsafe_pickle_is_named(exported, tmp_path):
  import argparse

  import torch
  from safetensors.numpy import load_file

  tensors = {k: torch.from_numpy(v)
             for k, v in load_file(os.path.join(exported, "model.safetensors")).items()}
  # torch's legacy (non-zip) format holds tensors only: safe to read, just not mmap-able.
  legacy = tmp_path / "legacy"
  _as_bin(exported, legacy, tensors, _use_new_zipfile_serialization=False)
  proc = _run_script("scripts/convert_from_hf.py", "--hf", str(legacy), "--output",
                     str(tmp_path / "run"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  params, _ = checkpoint.restore_params(str(tmp_path / "run"))
  _, expected = hf_import.import_hf(exported)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(np.asarray(got), want)
  # Training arguments pickled beside the weights: refused, and said to be what it is.
  unsafe = tmp_path / "unsafe"
  _as_bin(exported, unsafe, {**tensors, "args": argparse.Namespace(lr=1e-3)})
  proc = _run_script("scripts/convert_from_hf.py", "--hf", str(unsafe), "--output",
                     str(tmp_path / "run2"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert lines[0].startswith(f"error: weights file {unsafe}/pytorch_model.bin is a pickle "
                             "holding objects other than tensors (argparse.Namespace): unsafe")
  assert "safetensors" in lines[0] and f"{unsafe}/model.safetensors" in lines[0]
  assert "truncated" not in lines[0] and "weights_only` set to `False`" not in lines[0]
  assert not (tmp_path / "run2" / "checkpoints").exists()



def test_a_second_convert_to_hf_on_a_held_output_is_refused_at_once(trained, tmp_path):
  from olmo_jax import workdir as workdir_lib
  workdir, _, _ = trained
  out = tmp_path / "hf"
  lock = workdir_lib.lock_beside(str(out))  # as a running conversion holds it
  lock.acquire()
  try:
    proc = _run_script("scripts/convert_to_hf.py", "--checkpoint", workdir, "--output",
                       str(out), "--no-verify")
  finally:
    lock.release()
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f"error: output {out} is in use by another conversion (PID {os.getpid()} on host ")
  assert lines[0].endswith(f"choose another --output; lock file {tmp_path}/.hf.lock")
  assert sorted(p.name for p in tmp_path.iterdir()) == [".hf.lock"]  # nothing written
