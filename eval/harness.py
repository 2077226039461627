"""lm-evaluation-harness model `olmo_jax`: any lm-eval task on our checkpoints, no conversion.

    python -m eval.harness --checkpoint runs/150M --tasks truthfulqa_mc2,gsm8k [lm-eval flags]

is `lm-eval run --model olmo_jax --model_args checkpoint=runs/150M --tasks ...` with the
model registered in-process (every other flag goes to lm-eval unchanged). An unknown task or
a dataset lm-eval cannot load (e.g. not in the HF datasets cache, offline) is one `error:`
line and exit code 2, as in eval.run. The LM scores with
eval/scorer.py (the training model's own forward, context shared among choices) and generates
with its KV-cached greedy decoder. Requests are split into tokens as lm-eval's `hf` model
splits them, so both give the same numbers on the same weights.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from olmo_jax import runtime

runtime.init()  # first, before JAX loads: a host without accelerators runs on its CPU

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from data_pipeline.tokenizer import EOS_TOKEN_ID
from eval import lm
from eval.encoding import Encoder, UsageError
from olmo_jax.hf import ConversionError
from olmo_jax.load import load_model

DEFAULT_MAX_GEN_TOKS = 256


@register_model("olmo_jax")
class OlmoJaxLM(LM):
  """lm-eval LM over an olmo_jax checkpoint (ours or an HF directory).

  model_args: checkpoint=DIR[,max_length=N][,batch_tokens=N][,dtype=float32].
  """

  def __init__(self, checkpoint: str | None = None, max_length: int | None = None,
               batch_tokens: int = 8192, dtype: str | None = None, _scorer=None,
               _tokenizer=None, _eos_id: int = EOS_TOKEN_ID, **_unused: Any):
    super().__init__()
    from data_pipeline.tokenizer import load_tokenizer
    from eval.scorer import Scorer
    if _scorer is None:
      if checkpoint is None:
        raise ValueError("model_args needs checkpoint=DIR (a run, step or HF directory)")
      m = load_model(checkpoint, dtype=dtype, max_length=int(max_length) if max_length else None)
      _scorer = Scorer(m.cfg, m.params, max_length=m.max_length,
                       batch_tokens=int(batch_tokens))
      _tokenizer = load_tokenizer(m.tokenizer)
      _eos_id = m.eos_id
    self.scorer = _scorer
    self.tok = _tokenizer
    self.eos_id = _eos_id
    self.encoder = Encoder(_tokenizer, _eos_id)

  @classmethod
  def from_scorer(cls, scorer, tokenizer) -> "OlmoJaxLM":
    return cls(_scorer=scorer, _tokenizer=tokenizer)

  @property
  def max_length(self) -> int:
    return self.scorer.max_length

  @property
  def eot_token_id(self) -> int:
    return self.eos_id

  @property
  def tokenizer_name(self) -> str:
    return "olmo_jax"

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = self.encoder.pairs([tuple(r.args[:2]) for r in requests])
    return self.scorer.loglikelihood(pairs)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    # eval/lm.py's windows at stride = max_length are lm-eval's own rolling windows
    # (utils.get_rolling_token_windows with context_len=1, made disjoint): the same requests.
    return lm.rolling_logprobs(self.scorer, [self.tok.encode(r.args[0]).ids for r in requests],
                               prefix=self.eos_id)

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    from eval.scorer import greedy_generate
    out: list[str | None] = [None] * len(requests)
    # One decoder call per distinct generation setting; greedy only (as `hf` with
    # do_sample=False, which these tasks use).
    by_kwargs: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      kw = dict(r.args[1]) if len(r.args) > 1 and r.args[1] else {}
      until = kw.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      eos_text = self.tok.decode([self.eos_id], skip_special_tokens=False)
      if eos_text not in until:
        until.append(eos_text)
      key = (tuple(until), int(kw.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)))
      by_kwargs.setdefault(key, []).append(i)
    for (until, max_new), idx in by_kwargs.items():
      prompts = [self.tok.encode(requests[i].args[0]).ids if requests[i].args[0]
                 else [self.eos_id] for i in idx]

      def stop(tokens, until=until):
        text = self.tok.decode(tokens, skip_special_tokens=False)
        return any(u in text for u in until)

      gens = greedy_generate(self.scorer, prompts, max_new, stop=stop)
      for i, g in zip(idx, gens):
        text = self.tok.decode(g, skip_special_tokens=False)
        for u in until:
          text = text.split(u)[0]
        out[i] = text
    return out  # type: ignore[return-value]


def check_lm_eval_tasks(names: Sequence[str], include_path: str | None = None) -> None:
  """Raises ValueError naming lm-eval task names it does not know (before any model loads)."""
  from lm_eval.tasks import TaskManager
  tm = TaskManager(include_path=include_path) if include_path else TaskManager()
  unknown = [n for n in names if n not in tm.all_tasks]
  if unknown:
    raise ValueError(f"lm-eval knows no task {unknown}; see `lm-eval ls tasks`")


def run_lm_eval(lm: OlmoJaxLM, names: Sequence[str], limit: int | None = None,
                include_path: str | None = None) -> dict[str, dict[str, float]]:
  """lm-eval results {task: {metric: value}} of tasks run with `lm` in-process."""
  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager
  tm = TaskManager(include_path=include_path) if include_path else TaskManager()
  res = simple_evaluate(model=lm, tasks=list(names), limit=limit, task_manager=tm)
  return {t: {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
          for t, m in res["results"].items()}


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m eval.harness --checkpoint DIR --tasks ... [any lm-eval run flags]`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--checkpoint" not in argv and not any(a.startswith("--checkpoint=") for a in argv):
    print("error: --checkpoint DIR is required (a run, step or HF directory)", file=sys.stderr)
    return 2
  rest, checkpoint = [], None
  it = iter(argv)
  for a in it:
    if a == "--checkpoint":
      checkpoint = next(it, None)
    elif a.startswith("--checkpoint="):
      checkpoint = a.split("=", 1)[1]
    else:
      rest.append(a)
  if not checkpoint or not os.path.exists(checkpoint):
    print(f"error: checkpoint {checkpoint} does not exist; pass a run, step or HF directory",
          file=sys.stderr)
    return 2
  model_args = f"checkpoint={checkpoint}"
  if "--model_args" in rest:  # extra model args (max_length=..., dtype=...) are appended
    j = rest.index("--model_args")
    model_args += "," + rest[j + 1]
    del rest[j:j + 2]
  from lm_eval._cli import HarnessCLI
  from lm_eval.utils import setup_logging
  setup_logging()
  cli = HarnessCLI()
  saved = sys.argv
  sys.argv = ["lm-eval", "run", "--model", "olmo_jax", "--model_args", model_args] + rest
  try:
    args = cli.parse_args()
    cli.execute(args)
  except SystemExit as e:
    return int(e.code or 0)
  except Exception as e:
    message = _input_error(e)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2
  finally:
    sys.argv = saved
  return 0


def _input_error(e: Exception) -> str | None:
  """The one-line message of an unknown task or a dataset lm-eval cannot load, else None."""
  first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
  if isinstance(e, (UsageError, ConversionError)):  # e.g. an HF directory it cannot read
    return first
  if isinstance(e, ValueError) and first.startswith("Tasks not found"):
    return (f"lm-eval: {first}; list the known ones with `lm-eval ls tasks`, or add a task "
            "directory with --include_path DIR")
  dataset_errors: tuple[type, ...] = (ConnectionError, FileNotFoundError)
  try:
    from datasets.exceptions import DatasetNotFoundError
    dataset_errors += (DatasetNotFoundError,)
  except ImportError:
    pass
  if isinstance(e, dataset_errors):
    return (f"lm-eval could not load a task's dataset ({type(e).__name__}: {first}); "
            "offline, an lm-eval task needs its dataset in the HF datasets cache (load it "
            "once with the network) or in local files named by a task under --include_path; "
            "the OLMES tasks run offline with `python -m eval.run`")
  return None


if __name__ == "__main__":
  sys.exit(main())
