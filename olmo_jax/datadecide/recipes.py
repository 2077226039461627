"""What each recipe of a study trains on, in one line: `<workdir>/recipes.json`.

A study recipe is a set of overrides of the training config's `data` subtree. `describe`
resolves one into {"data": ..., "curation": ..., "overrides": {...}}:
  data      for a named mixture recipe (data.mixture=curation_dedup, dolma17, a .py file):
            its name and `description`, plus any other data overrides; for `custom`, `auto`,
            `all` or `synthetic`: the overrides themselves ("mixture=custom, sources=...");
  curation  the chain of each curated source of the recipe ("sample_prose: exact_dedup >
            minhash_dedup(...)"), '-' when no source is curated.
The report (report.py) turns recipes.json into its "Recipes" table. Only `describe` reads
recipe files (data_pipeline/recipe_config.py, which imports no JAX); reading recipes.json and
the report never do.
"""

from __future__ import annotations

import json
import os

from data_pipeline import curation, recipe_config
from olmo_jax import paths
from olmo_jax.datadecide.results import InputError

FILENAME = "recipes.json"
BUILTIN_MIXTURES = ("auto", "all", "synthetic", "custom")


def _pairs(fields: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in fields.items())


def describe(name: str, overrides: dict, common: dict | None = None) -> dict:
  """The one-line description of study recipe `name`.

  overrides: the recipe's `data.*` overrides; common: `data.*` fields every cell gets (the
  study's `overrides.data`, which win, as on the command line). Raises InputError when the
  mixture recipe cannot be loaded.
  """
  fields = {**dict(overrides), **dict(common or {})}
  mixture = str(fields.get("mixture", "auto"))
  if mixture in BUILTIN_MIXTURES:
    return {"data": _pairs(overrides) or "mixture=auto", "curation": "-",
            "overrides": dict(overrides)}
  try:
    directory = recipe_config.recipes_dir({"recipes_dir": fields.get("recipes_dir", "")})
    recipe = recipe_config.load_recipe(mixture, directory)
    sources = recipe_config.flatten_recipe(recipe, directory)
  except (ValueError, FileNotFoundError) as e:
    raise InputError(f"recipe {name!r}: {e}") from None
  dropped = {s.strip() for s in str(fields.get("drop_sources", "")).split(",") if s.strip()}
  chains = []
  for src, spec in sources.items():
    cur = spec.get("curation")
    if src in dropped or not cur:
      continue
    chain = cur.get("description") or curation.describe_chain(json.loads(cur["chain"]))
    chains.append(f"{src}: {chain}")
  desc = recipe.get("description", "")
  data = f"{mixture}: {desc}" if desc else mixture
  rest = {k: v for k, v in overrides.items() if k != "mixture"}
  if rest:
    data += f" ({_pairs(rest)})"
  return {"data": data, "curation": "; ".join(chains) or "-", "overrides": dict(overrides)}


def write(path: str, descriptions: dict) -> str:
  """Writes recipes.json atomically; returns its path."""
  paths.write_atomic(path, json.dumps(descriptions, indent=1, default=str) + "\n")
  return path


def read(path: str) -> dict:
  """{recipe: {"data": str, "curation": str, ...}} from a recipes.json (InputError if bad)."""
  if not os.path.isfile(path):
    raise InputError(f"--recipes {path}: file not found (a study writes it to "
                     f"WORKDIR/{FILENAME})")
  try:
    with open(path) as f:
      out = json.load(f)
  except json.JSONDecodeError as e:
    raise InputError(f"--recipes {path}: not valid JSON ({e})") from None
  if not isinstance(out, dict) or not all(isinstance(v, dict) for v in out.values()):
    raise InputError(f"--recipes {path}: expected {{recipe: {{\"data\": ..., \"curation\": "
                     f"...}}}}")
  return out
