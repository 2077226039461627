"""`python scripts/convert_to_hf.py --checkpoint runs/150M --output hf/150M`.

Restores only the parameters of a checkpoint (a workdir, its checkpoints dir, or one step dir;
the optimizer state is never read), writes an HF directory through olmo_jax/hf.py, then checks
the export: the transformers model's logits on a few sequences must equal ours. A non-empty
--output is refused unless --overwrite; the export is written and verified in a temporary
directory beside it and only then swapped in, so a failed or interrupted conversion leaves the
old output as it was. One conversion per output: it holds `.NAME.lock` beside --output
(olmo_jax/workdir.py), so a second one fails at once; under that lock, the `.NAME.tmp-*`
directories a killed conversion (kill -9) left beside --output are removed and reported.
The result loads with `AutoModelForCausalLM.from_pretrained(HF_DIR)` and runs under
`lm-eval run --model hf --model_args pretrained=HF_DIR`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from olmo_jax import runtime  # noqa: E402

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU

import numpy as np  # noqa: E402

from data_pipeline import atomic  # noqa: E402
from olmo_jax import load as load_lib  # noqa: E402
from olmo_jax import paths  # noqa: E402
from olmo_jax import workdir as workdir_lib  # noqa: E402

VERIFY_TEXTS = (
    "The DataDecide suite trains many small models to predict which data recipe wins at scale.",
    "Checkpoints are written every few thousand steps and converted for evaluation.",
)


def verify_sequences(cfg, tokenizer: str | None, n_random: int = 2, length: int = 64):
  """int32 [B, L] token ids: tokenized text (if a tokenizer is known) plus random ids."""
  length = min(length, cfg.max_seq_len)
  rng = np.random.default_rng(0)
  rows = [rng.integers(0, cfg.vocab_size, length) for _ in range(n_random)]
  if tokenizer is not None:
    from data_pipeline.tokenizer import load_tokenizer
    tok = load_tokenizer(tokenizer)
    ids = [i for t in VERIFY_TEXTS for i in tok.encode(" " + t).ids]
    if max(ids) < cfg.embedding_size:
      rows.append(np.resize(np.array(ids), length))
  return np.stack(rows).astype(np.int32)


def as_exported(params: dict, dtype: str) -> dict:
  """The params rounded to the export dtype (float32 again): what the HF model holds."""
  import jax
  import ml_dtypes
  np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
  return jax.tree.map(lambda x: np.asarray(x).astype(np_dtype).astype(np.float32), params)


def compare_logits(cfg, params: dict, hf_dir: str, ids: np.ndarray) -> tuple[float, float]:
  """(max |HF - ours| logit difference, max |our logit|) on ids int32 [B, L]."""
  import jax
  import torch
  import transformers

  from olmo_jax.model import forward
  jax.config.update("jax_default_matmul_precision", "highest")
  ours = np.asarray(jax.jit(forward, static_argnums=0)(
      dataclasses.replace(cfg, dtype="float32"), params, ids))
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  model.eval()
  with torch.no_grad():
    theirs = model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()
  if theirs.shape != ours.shape:
    raise AssertionError(f"HF logits have shape {theirs.shape}, ours {ours.shape}")
  return float(np.abs(theirs - ours).max()), float(np.abs(ours).max())


def check_output(output: str, overwrite: bool) -> None:
  """Refuses an --output that is a file, or a non-empty directory without --overwrite."""
  if paths.is_remote(output):  # transformers loads HF directories from a file system
    raise ValueError(f"--output {output}: write the HF directory to a local path, then copy "
                     "it to the bucket (gcloud storage cp -r DIR gs://...)")
  if os.path.exists(output) and not os.path.isdir(output):
    raise ValueError(f"--output {output} is a file, not a directory")
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    raise ValueError(f"--output {output} is not empty; pass --overwrite to replace it")




def convert(checkpoint_path: str, output: str, *, step: int | None = None,
            dtype: str = "float32", tokenizer: str | None = "olmo", verify: bool = True,
            tol: float = 1e-4, overwrite: bool = False, print_fn=print) -> float | None:
  """Exports a checkpoint's params to an HF directory; returns the verified max logit diff."""
  check_output(output, overwrite)
  paths.check_bucket(checkpoint_path, "--checkpoint", write=False)
  if load_lib.is_hf_dir(checkpoint_path):
    raise ValueError(f"--checkpoint {checkpoint_path} is an HF directory already; pass a run "
                     "directory, its checkpoints/ dir or one step dir")
  lock = workdir_lib.lock_beside(output)
  try:
    lock.acquire()
  except workdir_lib.WorkdirBusyError as e:
    raise ValueError(str(e)) from None
  try:
    check_output(output, overwrite)  # again under the lock: another may have just finished
    for path, size in atomic.remove_leftovers(output):
      print_fn(f"removed {path} ({size / 2**20:,.1f} MiB), left by a conversion that was "
               "killed before it finished")
    return _convert(checkpoint_path, output, step, dtype, tokenizer, verify, tol, print_fn)
  finally:
    lock.release()


def _convert(checkpoint_path, output, step, dtype, tokenizer, verify, tol, print_fn):
  from olmo_jax import hf
  model = load_lib.load_model(checkpoint_path, step=step)
  cfg, params = model.cfg, model.params
  print_fn(f"restored params of step {model.step} from {checkpoint_path} "
           f"({cfg.variant}, d_model={cfg.d_model}, {cfg.n_layers} layers)")
  with atomic.replacing_directory(output) as tmp:
    hf.export_hf(cfg, params, tmp, tokenizer=tokenizer, dtype=dtype)
    diff = None
    if verify:
      diff = verify_export(cfg, params, tmp, output, dtype, tokenizer, tol, print_fn)
  print_fn(f"wrote {output} ({cfg.spec.hf_architecture}, {dtype})")
  return diff


def verify_export(cfg, params: dict, hf_dir: str, output: str, dtype: str,
                  tokenizer: str | None, tol: float, print_fn) -> float:
  """Max |logit diff| of the HF model in hf_dir against ours; AssertionError over the bound."""
  if dtype != "float32":
    params = as_exported(params, dtype)
  ids = verify_sequences(cfg, tokenizer)
  diff, scale = compare_logits(cfg, params, hf_dir, ids)
  bound = tol * max(1.0, scale)
  print_fn(f"verified: max |logit diff| HF vs olmo_jax = {diff:.3e} over {ids.shape[0]} "
           f"sequences of {ids.shape[1]} tokens (max |logit| {scale:.2f}, bound {bound:.1e})")
  if not diff <= bound:
    raise AssertionError(f"the export for {output} does not reproduce our logits: max diff "
                         f"{diff:.3e} > {bound:.1e}; {output} was left as it was")
  return diff


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True,
                 help="a workdir, its checkpoints/ dir, or one step dir (DIR/checkpoints/STEP)")
  p.add_argument("--output", required=True,
                 help="HF directory to write (new or empty, unless --overwrite)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a non-empty --output (swapped in only once written and verified)")
  p.add_argument("--step", type=int, default=None, help="step to export (default: newest)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
  p.add_argument("--tokenizer", default="olmo",
                 help="'olmo', a tokenizer.json path, or 'none' to write no tokenizer")
  p.add_argument("--no-verify", action="store_true", help="skip the logit comparison")
  p.add_argument("--tol", type=float, default=1e-4,
                 help="allowed max |logit diff|, relative to max(1, max |logit|)")
  a = p.parse_args(argv)
  from olmo_jax import checkpoint, hf
  try:
    convert(a.checkpoint, a.output, step=a.step, dtype=a.dtype,
            tokenizer=None if a.tokenizer == "none" else a.tokenizer, verify=not a.no_verify,
            tol=a.tol, overwrite=a.overwrite)
  except (checkpoint.CheckpointError, hf.ConversionError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except AssertionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
