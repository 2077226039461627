"""In-loop evaluation: a trainer callback that scores tasks every `every` steps.

The entry point (olmo_jax/train.py) builds it from `eval.tasks` / `eval.every` and passes it
to the trainer as one of its callbacks; the training library never imports eval. Requests
are read and tokenized once, when the callback is built; each call scores the current params
with the same jitted functions (no recompilation after the first call).
"""

from __future__ import annotations

from typing import Any, Callable

from eval import evaluation
from eval import tasks as tasks_lib


def make_eval_callback(tasks: str | list[str], every: int, mcfg, *, limit: int | None = 200,
                       max_length: int | None = None, tokenizer: str = "olmo",
                       batch_tokens: int = 8192, mesh=None, prefix: str = "eval/"
                       ) -> Callable[[int, Any], dict[str, float] | None]:
  """callback(step, state) -> {"eval/<task>/<primary metric>": v, "eval/<suite>": v} or None.

  tasks: names or suites (eval/tasks.py); every: steps between evaluations (> 0); mcfg: the
  ModelConfig of state["params"]; limit: documents per task (per MMLU subject).
  Unknown tasks and unreadable request files fail here, before training starts.
  """
  import dataclasses

  from data_pipeline.tokenizer import load_tokenizer
  from eval.scorer import Scorer
  if every <= 0:
    raise ValueError(f"eval.every={every} must be positive for task evaluation")
  names = tasks_lib.task_names(tasks)
  resolved = [t for t in tasks_lib.resolve_tasks(names) if t.scored_here]
  suites = tasks_lib.suite_names(names)
  instances = {t.name: tasks_lib.load_instances(t, limit) for t in resolved}
  tok = load_tokenizer(tokenizer)
  cfg = dataclasses.replace(mcfg, remat="none")
  state_box: dict[str, Any] = {}

  def callback(step: int, state) -> dict[str, float] | None:
    if step % every:
      return None
    scorer = state_box.get("scorer")
    if scorer is None:
      scorer = state_box["scorer"] = Scorer(cfg, state["params"], max_length=max_length,
                                            batch_tokens=batch_tokens, mesh=mesh)
    else:
      scorer.set_params(state["params"])
    # strict=False: a diverging run logs NaN here; stopping it is the trainer's decision.
    agg, _ = evaluation.evaluate(scorer, tok, resolved, task_instances=instances,
                                 suites=suites,
                                 strict=False)
    out = {}
    for task, metric in agg["primary_metrics"].items():
      out[f"{prefix}{task}/{metric}"] = float(agg["tasks"][task][metric])
    for name, macro in agg["macro"].items():
      if name in tasks_lib.SUITES:
        out[f"{prefix}{name}"] = float(macro["value"])
    return out

  return callback
