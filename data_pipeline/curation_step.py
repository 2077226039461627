"""The curation step interface: parameters checked on construction, a spec that the cache key
hashes, cheap input checks and the keep/drop decision over a corpus.

Each step has `name`, `PARAMS` {param: (kind, default)}, `check(corpus)` (cheap checks of the
inputs, before tokenisation) and `apply(corpus, alive, workers)` -> (keep bool[len(alive)],
[(reason, detail)] for each dropped document in order). The steps themselves live by family:
data_pipeline/dedup.py, quality_rules.py and selection.py; data_pipeline/curation.py runs
a chain of them.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipeline.corpus import Corpus

# Bumped whenever a step's decisions change for the same parameters (2: MinHash clusters and
# recall banding, datatrove's own word splitter, budget filling, k-means starts), so curated
# files made before are rebuilt, not reused.
CHAIN_VERSION = 2


class CurationError(ValueError):
  """A user error in a curation chain or its inputs (the CLI prints it and exits 2)."""



def is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_param(step: str, name: str, kind: str, v) -> None:
  """Raises CurationError unless v fits kind: frac [0,1], count int >= 0, pos int >= 1,
  num >= 0, unit (0,1], bool, str, strs; a trailing '?' allows None."""
  if kind.endswith("?"):
    if v is None:
      return
    kind = kind[:-1]
  ok = {
      "frac": lambda: is_number(v) and 0 <= v <= 1,
      "unit": lambda: is_number(v) and 0 < v <= 1,
      "num": lambda: is_number(v) and v >= 0,
      "count": lambda: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
      "pos": lambda: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
      "bool": lambda: isinstance(v, bool),
      "str": lambda: isinstance(v, str),
      "strs": lambda: isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v),
      "ngram_fracs": lambda: isinstance(v, (list, tuple)) and all(
          isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], int)
          and p[0] >= 1 and is_number(p[1]) and 0 <= p[1] <= 1 for p in v),
  }[kind]()
  if not ok:
    want = {"frac": "a number in [0, 1]", "unit": "a number in (0, 1]",
            "num": "a number >= 0", "count": "an integer >= 0", "pos": "an integer >= 1",
            "bool": "true or false", "str": "a string", "strs": "a list of strings",
            "ngram_fracs": "a list of [n >= 1, fraction in [0, 1]] pairs"}[kind]
    raise CurationError(f"curation step {step!r}: {name} must be {want}, got {v!r}")


def jsonable(v):
  """Tuples -> lists, recursively, so that params hash the same however they were written."""
  if isinstance(v, (list, tuple)):
    return [jsonable(x) for x in v]
  if isinstance(v, dict):
    return {k: jsonable(x) for k, x in v.items()}
  return v



class Step:
  name = ""
  PARAMS: dict[str, tuple[str, object]] = {}

  def __init__(self, **params):
    unknown = sorted(set(params) - set(self.PARAMS))
    if unknown:
      raise CurationError(f"curation step {self.name!r}: unknown parameter(s) {unknown}; "
                          f"known: {sorted(self.PARAMS)}")
    self.params = {k: jsonable(params.get(k, default))
                   for k, (_, default) in self.PARAMS.items()}
    for k, (kind, _) in self.PARAMS.items():
      check_param(self.name, k, kind, self.params[k])
    self.validate()

  def validate(self) -> None:
    """Cross-parameter checks."""

  def spec(self) -> dict:
    """The step with every parameter (defaults filled): what the cache key hashes."""
    return {"step": self.name, **self.params}

  def check(self, corpus: Corpus) -> None:
    """Cheap checks against the inputs, before any tokenisation."""

  def apply(self, corpus: Corpus, alive: np.ndarray, workers: int = 1):
    raise NotImplementedError
