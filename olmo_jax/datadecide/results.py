"""The results table of a study: one tidy row per (run, checkpoint, task, metric).

Columns (`COLUMNS`): recipe, size, seed, step, tokens, compute, task, metric, value, and
optionally `planned_step` (the final step the run was planned to reach; a study writes it).
`tokens` is the number of training tokens seen at `step`; `compute` is 6 * N * tokens in
FLOPs, with N the non-embedding parameter count of the size (DataDecide's accounting). It is
stored as float64 (the 1B figures exceed int64); `ladder_compute` gives the exact integers.

`read_table` also accepts DataDecide's published evaluation tables (HF datasets
`allenai/DataDecide-eval-results`: rows per params, data, task, step, seed with a JSON
`metrics` column) and converts them, mapping recipe display names onto our recipe names.
No JAX here (imports `olmo_jax.sizes`, which is pure Python).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd

from data_pipeline import atomic
from olmo_jax import sizes

COLUMNS = ("recipe", "size", "seed", "step", "tokens", "compute", "task", "metric", "value")
OPTIONAL_COLUMNS = ("planned_step",)
PUBLISHED_COLUMNS = ("params", "data", "task", "step", "seed", "metrics")

# DataDecide display names -> our recipe names (configs/data_configs/datadecide.py).
DISPLAY_NAMES = {
    "Dolma1.7": "dolma17",
    "Dolma1.7 (no code)": "no_code",
    "Dolma1.7 (no math, code)": "no_math_no_code",
    "Dolma1.7 (no math, no code)": "no_math_no_code",
    "Dolma1.7 (no Reddit)": "no_reddit",
    "Dolma1.7 (no Flan)": "no_flan",
    "Dolma1.6++": "dolma-v1-6-and-sources-baseline",
    "C4": "c4",
    "FineWeb-Pro": "prox_fineweb_pro",
    "FineWeb-Edu": "fineweb_edu_dedup",
    "Falcon": "falcon",
    "Falcon+CC": "falcon_and_cc",
    "Falcon+CC (QC 10%)": "falcon_and_cc_eli5_oh_top10p",
    "Falcon+CC (QC 20%)": "falcon_and_cc_eli5_oh_top20p",
    "Falcon+CC (QC Orig 10%)": "falcon_and_cc_og_eli5_oh_top10p",
    "Falcon+CC (QC Tulu 10%)": "falcon_and_cc_tulu_qc_top10",
    "DCLM-Baseline": "DCLM-baseline",
    "DCLM-Baseline (QC 7%, FW2)": "dclm_ft7percentile_fw2",
    "DCLM-Baseline (QC 7%, FW3)": "dclm_ft7percentile_fw3",
    "DCLM-Baseline (QC FW 10%)": "dclm_fw_top10",
    "DCLM-Baseline (QC FW 3%)": "dclm_fw_top3",
    "DCLM-Baseline (QC 10%)": "pos_eli5_oh_neg_dclm_refinedweb_steps_2000_lr3e4_top10p",
    "DCLM-Baseline (QC 20%)": "pos_eli5_oh_neg_dclm_refinedweb_steps_2000_lr3e4_top20p",
    "DCLM-Baseline 25% / Dolma 75%": "dolma17-75p-DCLM-baseline-25p",
    "DCLM-Baseline 50% / Dolma 50%": "dolma17-50p-DCLM-baseline-50p",
    "DCLM-Baseline 75% / Dolma 25%": "dolma17-25p-DCLM-baseline-75p",
}

# Seed labels of the published tables -> the training seeds they name (the DataDecide
# release: default seed 6198; extra seeds 14 and 15 at the small sizes, 4 and 5 at the large).
PUBLISHED_SEEDS = {"default": sizes.DEFAULT_SEED, "small aux 2": 14, "small aux 3": 15,
                   "large aux 2": 4, "large aux 3": 5}


class InputError(ValueError):
  """A problem with the user's input (file, column, size, recipe): reported, exit code 2."""


def _key(name: str) -> str:
  """Display names compared without case, spaces or punctuation differences."""
  return re.sub(r"[^a-z0-9%+.]", "", str(name).lower())


_DISPLAY_KEYS = {_key(k): v for k, v in DISPLAY_NAMES.items()}


def recipe_names() -> list[str]:
  """Our 25 DataDecide recipe names (from the recipe table; no JAX)."""
  return sorted(set(DISPLAY_NAMES.values()))


def recipe_from_display(name: str, extra: dict[str, str] | None = None) -> str:
  """Our recipe name for a DataDecide display name (or one of our names, unchanged)."""
  if extra and name in extra:
    return extra[name]
  if name in DISPLAY_NAMES.values():
    return name
  hit = _DISPLAY_KEYS.get(_key(name))
  if hit is None:
    raise InputError(
        f"unknown DataDecide recipe display name {name!r}; map it with --recipe-map "
        f"'{{\"{name}\": \"our_name\"}}' (known names: {', '.join(sorted(DISPLAY_NAMES))})")
  return hit


def size_params(size: str) -> int:
  """N (non-embedding parameters, as DataDecide counts them) of a ladder size."""
  s = sizes.LADDER.get(str(size))
  if s is None:
    raise InputError(f"size {size!r} is not a DataDecide ladder size; "
                     f"choose one of {', '.join(sizes.LADDER)}")
  return sizes.non_embedding_params(s.d_model, s.n_layers)


def ladder_tokens(size: str, step: int) -> int:
  """Training tokens of a ladder run after `step` optimizer steps (published batch)."""
  return int(step) * sizes.get_size(str(size)).tokens_per_step


def ladder_compute(size: str, step: int) -> int:
  """Exact 6 * N * tokens (FLOPs) of a ladder run after `step` steps."""
  return sizes.training_flops(size_params(size), ladder_tokens(size, step))


def validate_table(df: pd.DataFrame, where: str = "results table") -> pd.DataFrame:
  """Checks the columns and types of a results table; returns it with canonical dtypes."""
  missing = [c for c in COLUMNS if c not in df.columns]
  if missing:
    raise InputError(f"{where} is missing column(s) {', '.join(missing)}; a results table has "
                     f"columns {', '.join(COLUMNS)}")
  out = df.loc[:, list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df.columns]].copy()
  for c in ("recipe", "size", "task", "metric"):
    out[c] = out[c].astype(str)
  for c in ("seed", "step") + tuple(c for c in OPTIONAL_COLUMNS if c in out.columns):
    try:
      out[c] = pd.to_numeric(out[c], errors="raise").astype(np.int64)
    except (ValueError, TypeError) as e:
      raise InputError(f"{where}: column {c!r} must hold integers ({e})") from None
  for c in ("tokens", "compute", "value"):
    try:
      out[c] = pd.to_numeric(out[c], errors="raise").astype(np.float64)
    except (ValueError, TypeError) as e:
      raise InputError(f"{where}: column {c!r} must hold numbers ({e})") from None
  key = ["recipe", "size", "seed", "step", "task", "metric"]
  dup = out.duplicated(key, keep=False)
  if dup.any():
    first = out[dup].iloc[0]
    raise InputError(f"{where} has {int(dup.sum())} duplicate rows for one (recipe, size, seed, "
                     f"step, task, metric), e.g. {dict(first[key])}; keep one value per cell")
  return out.reset_index(drop=True)


def make_rows(recipe: str, size: str, seed: int, step: int, tokens: int, n_params: int,
              scores: dict[str, dict[str, float]], planned_step: int | None = None
              ) -> list[dict]:
  """Table rows of one checkpoint's scores {task: {metric: value}}."""
  compute = float(sizes.training_flops(n_params, tokens))
  extra = {} if planned_step is None else {"planned_step": int(planned_step)}
  rows = []
  for task, metrics in sorted(scores.items()):
    for metric, value in sorted(metrics.items()):
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        rows.append({"recipe": recipe, "size": size, "seed": int(seed), "step": int(step),
                     "tokens": float(tokens), "compute": compute, "task": task,
                     "metric": metric, "value": float(value), **extra})
  return rows


RUN = ["recipe", "size", "seed"]


def truncated_runs(df: pd.DataFrame) -> pd.DataFrame:
  """Runs whose last step is short of their planned final step.

  Columns recipe, size, seed, last_step, planned_step. The plan is the table's
  `planned_step` where it has one, else the largest step any run of that size reached (a
  published table: the size's other recipes and seeds).
  """
  last = df.groupby(RUN, as_index=False)["step"].max().rename(columns={"step": "last_step"})
  if "planned_step" in df.columns:
    plan = df.groupby(RUN, as_index=False)["planned_step"].max()
    last = last.merge(plan, on=RUN)
  else:
    last["planned_step"] = last["size"].map(df.groupby("size")["step"].max())
  out = last[last["last_step"] < last["planned_step"]]
  return out.sort_values(RUN).reset_index(drop=True)


def drop_truncated(df: pd.DataFrame, allow: bool = False) -> tuple[pd.DataFrame, list[str]]:
  """(the table for the analysis, warnings): truncated runs named, and left out unless
  `allow`; the `planned_step` column is dropped either way."""
  bad = truncated_runs(df)
  out = df.drop(columns=[c for c in OPTIONAL_COLUMNS if c in df.columns])
  if not len(bad):
    return out, []
  names = ", ".join(f"{r.recipe}/{r.size}/seed{r.seed} (step {r.last_step} of "
                    f"{r.planned_step})" for r in bad.itertuples())
  if allow:
    return out, [f"{len(bad)} truncated run(s) kept (--allow-truncated): their last checkpoint "
                 f"is scored as if final: {names}"]
  keep = ~out.set_index(RUN).index.isin(bad.set_index(RUN).index)
  return out[keep].reset_index(drop=True), [
      f"{len(bad)} truncated run(s) left out of the analysis (last step short of the planned "
      f"final step; --allow-truncated keeps them): {names}"]


def convert_published(df: pd.DataFrame, recipe_map: dict[str, str] | None = None
                      ) -> pd.DataFrame:
  """DataDecide's published eval table (params, data, task, step, seed, metrics) -> ours.

  Every numeric entry of the JSON `metrics` column becomes one row; tokens and compute are
  recomputed from the ladder (published batch x step, 6 * N * tokens).
  """
  missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
  if missing:
    raise InputError(f"published DataDecide table is missing column(s) {', '.join(missing)}")
  names = {d: recipe_from_display(d, recipe_map) for d in df["data"].astype(str).unique()}
  rows = []
  for r in df.itertuples(index=False):
    size = str(r.params)
    if size not in sizes.LADDER:
      raise InputError(f"published table: params={size!r} is not a ladder size; "
                       f"choose one of {', '.join(sizes.LADDER)}")
    seed = _published_seed(r.seed)
    metrics = r.metrics if isinstance(r.metrics, dict) else json.loads(r.metrics)
    step = int(r.step)
    rows.extend(make_rows(names[str(r.data)], size, seed, step, ladder_tokens(size, step),
                          size_params(size), {str(r.task): metrics}))
  return validate_table(pd.DataFrame(rows, columns=list(COLUMNS)), "converted published table")


def _published_seed(seed) -> int:
  s = str(seed).strip()
  if s in PUBLISHED_SEEDS:
    return PUBLISHED_SEEDS[s]
  try:
    return int(float(s))
  except ValueError:
    raise InputError(f"published table: unknown seed label {seed!r}; known: "
                     f"{', '.join(PUBLISHED_SEEDS)} or an integer") from None


def read_table(path: str, recipe_map: dict[str, str] | None = None) -> pd.DataFrame:
  """Reads a results table (.parquet or .csv; ours or DataDecide's published layout)."""
  if not os.path.isfile(path):
    raise InputError(f"results table not found: {path}")
  try:
    if path.endswith(".parquet"):
      df = pd.read_parquet(path)
    elif path.endswith((".csv", ".csv.gz")):
      df = pd.read_csv(path)
    elif path.endswith((".jsonl", ".json")):
      df = pd.read_json(path, lines=path.endswith(".jsonl"))
    else:
      raise InputError(f"results table {path}: unknown format; use .parquet, .csv or .jsonl")
  except InputError:
    raise
  except Exception as e:  # corrupt or unreadable files are the user's to fix
    raise InputError(f"cannot read results table {path}: {e}") from None
  if all(c in df.columns for c in PUBLISHED_COLUMNS) and "recipe" not in df.columns:
    return convert_published(df, recipe_map)
  return validate_table(df, f"results table {path}")


def write_table(df: pd.DataFrame, stem: str) -> tuple[str, str]:
  """Writes `stem`.parquet and `stem`.csv (atomically); returns both paths."""
  df = validate_table(df)
  os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
  paths = (stem + ".parquet", stem + ".csv")
  atomic.write_atomic(paths[0], df.to_parquet(index=False))
  atomic.write_atomic(paths[1], df.to_csv(index=False))
  return paths
