"""Requests/s of our scorer on the `olmes` suite against lm-eval's `hf` backend, same run.

For each size, a random-init ladder model is exported to an HF directory; the same requests
(the first --limit documents of each `olmes` task, MMLU spread over its subjects, the
unconditional requests included) are scored by eval/scorer.py (compilation included) and by
lm-eval's HFLM on the export (float32, CPU), and the two sets of log-likelihoods are checked
against each other. Prints requests/s of both and their ratio, and the CPU model.

  python benchmarks/bench_eval.py [--sizes 20M 150M] [--limit 200] [--limits 150M=50]
  python benchmarks/bench_eval.py --sizes 1B --full --no-hf --dtype bfloat16   # GPU check
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from olmo_jax import runtime  # noqa: E402

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores visible)"
  except OSError:
    pass
  import platform
  return platform.processor() or "unknown CPU"


def olmes_requests(limit: int | None) -> list[tuple[str, str]]:
  """(context, continuation) texts of the first `limit` documents of each olmes task
  (None: every document, MMLU's full test split)."""
  from eval import tasks
  from eval.evaluation import requests_of
  out = []
  for t in tasks.resolve_tasks("olmes"):
    if t.kind is tasks.MMLU and limit is not None:
      per_subject = max(1, math.ceil(limit / len(tasks.MMLU_SUBJECTS)))
      insts = [i for s in tasks.MMLU_SUBJECTS
               for i in tasks.mmlu_subject_instances(s, t.variant, per_subject)][:max(limit, 1)]
    else:
      insts = tasks.load_instances(t, limit)
    out += requests_of(insts)
  return out


def bench_size(size: str, limit: int | None, hf_batch: int, max_length: int,
               dtype: str = "float32", with_hf: bool = True, batch_tokens: int = 8192
               ) -> dict:
  import numpy as np

  from data_pipeline.tokenizer import load_tokenizer
  from eval.encoding import Encoder
  from eval.scorer import Scorer
  from olmo_jax import hf, sizes, trainer
  from olmo_jax.model import ModelConfig
  s = sizes.get_size(size)
  cfg = ModelConfig(d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers,
                    max_seq_len=max_length, dtype=dtype)
  params = trainer.init_params(cfg, 0)
  texts = olmes_requests(limit)
  with tempfile.TemporaryDirectory() as d:
    hf.export_hf(cfg, params, d, tokenizer="olmo", dtype="float32")
    from tqdm import tqdm
    t0 = time.perf_counter()
    scorer = Scorer(cfg, params, max_length=max_length, batch_tokens=batch_tokens)
    pairs = Encoder(load_tokenizer("olmo")).pairs(texts)
    with tqdm(total=len(pairs), desc=f"{size} ours", unit="req", file=sys.stderr) as bar:
      ours = scorer.loglikelihood(pairs, progress=bar.update)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tqdm(total=len(pairs), desc=f"{size} ours, compiled", unit="req",
              file=sys.stderr) as bar:
      ours_warm = scorer.loglikelihood(pairs, progress=bar.update)  # no compilation
    t_warm = time.perf_counter() - t0
    n = len(texts)
    if not with_hf:
      return {"size": size, "limit": limit, "requests": n, "ours_s": t_ours,
              "ours_rps": n / t_ours, "ours_warm_rps": n / t_warm,
              "shapes": len(scorer.compiled_shapes)}
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    lm = HFLM(pretrained=d, dtype="float32", device="cpu", batch_size=hf_batch,
              max_length=max_length)
    reqs = [Instance("loglikelihood", {}, (c, k), i) for i, (c, k) in enumerate(texts)]
    t0 = time.perf_counter()
    theirs = lm.loglikelihood(reqs)  # lm-eval's own progress bar
    t_hf = time.perf_counter() - t0
  diff = float(np.max(np.abs(np.array([o[0] for o in ours]) - np.array([t[0] for t in theirs]))))
  assert all(a[0] == b[0] for a, b in zip(ours, ours_warm))
  return {"size": size, "limit": limit, "requests": n, "ours_s": t_ours, "ours_warm_s": t_warm,
          "hf_s": t_hf, "ours_rps": n / t_ours, "ours_warm_rps": n / t_warm,
          "hf_rps": n / t_hf, "ratio": t_hf / t_ours, "ratio_warm": t_hf / t_warm,
          "max_abs_diff": diff, "shapes": len(scorer.compiled_shapes)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", nargs="+", default=["20M", "150M"])
  p.add_argument("--limit", type=int, default=200, help="documents per task")
  p.add_argument("--limits", nargs="*", default=[],
                 help="per-size overrides, e.g. 150M=20 (slow sizes on small machines)")
  p.add_argument("--hf-batch", type=int, default=8, help="lm-eval hf batch size")
  p.add_argument("--max-length", type=int, default=2048)
  p.add_argument("--batch-tokens", type=int, default=8192, help="our scorer's batch size")
  p.add_argument("--full", action="store_true", help="every document of every task")
  p.add_argument("--no-hf", action="store_true", help="time only our scorer")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  a = p.parse_args(argv)
  limits = {k: int(v) for k, v in (x.split("=") for x in a.limits)}
  print(f"CPU: {cpu_model()}")
  rows = []
  for size in a.sizes:
    r = bench_size(size, None if a.full else limits.get(size, a.limit), a.hf_batch,
                   a.max_length, a.dtype, not a.no_hf, a.batch_tokens)
    rows.append(r)
    if a.no_hf:
      import jax
      print(f"{size}: {r['requests']} requests (limit {r['limit']}) on {jax.devices()[0]} | "
            f"ours {r['ours_s']:.1f} s incl. compile ({r['shapes']} shapes), "
            f"{r['ours_rps']:.1f} req/s, {r['ours_warm_rps']:.1f} warm", flush=True)
      continue
    print(f"{size}: {r['requests']} requests (limit {r['limit']} docs/task) | ours "
          f"{r['ours_rps']:.2f} req/s incl. compile ({r['shapes']} shapes), "
          f"{r['ours_warm_rps']:.2f} warm | lm-eval hf {r['hf_rps']:.2f} req/s | ratio "
          f"{r['ratio']:.2f}x ({r['ratio_warm']:.2f}x warm) | max |logprob diff| "
          f"{r['max_abs_diff']:.1e}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
