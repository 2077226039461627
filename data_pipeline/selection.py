"""Selection steps: keep the top fraction by a score, or subsample to a budget.

  top_p              keep the top `fraction` of documents by a score from a metadata field, a
                     Dolma-style attributes file, or a fastText classifier (fasttext); ties
                     go to the earlier document
  subsample          uniform or length-weighted sampling to a token budget (filled: a document
                     that does not fit is skipped) or fraction, or diversity sampling
                     round-robin over k-means clusters (several starts) of TF-IDF / hashed
                     n-gram features (scikit-learn)
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np

from data_pipeline.corpus import read_records
from data_pipeline.curation_step import CHAIN_VERSION, CurationError, Step, is_number


def load_fasttext(path: str):
  """A fastText model; raises CurationError naming the file when it does not load."""
  import fasttext  # deferred: only for classifier scores
  if not os.path.isfile(path):
    raise CurationError(f"curation step 'top_p': fastText classifier not found: {path}")
  fasttext.FastText.eprint = lambda *a, **k: None  # the load_model notice is not a problem
  try:
    return fasttext.load_model(path)
  except Exception as e:  # fastText raises ValueError/RuntimeError on a bad file
    raise CurationError(f"curation step 'top_p': fastText classifier {path} does not load "
                        f"({e}); give a model saved by fasttext's save_model") from e


def fasttext_scores(model, texts: list[str], label: str) -> np.ndarray:
  """P(label | text) of a fastText classifier for each text: float64[N].

  fastText reads one line per example, so newlines become spaces (as its CLI input would be).
  """
  labels, probs = model.predict([t.replace("\n", " ") for t in texts], k=-1)
  out = np.zeros(len(texts), dtype=np.float64)
  for k, (ls, ps) in enumerate(zip(labels, probs)):
    for lab, pr in zip(ls, ps):
      if lab == label:
        out[k] = float(pr)
        break
  return out


def _resolve(path: str, base_dir: str) -> str:
  return path if os.path.isabs(path) else os.path.join(base_dir, path)


class TopP(Step):
  name = "top_p"
  PARAMS = {"fraction": ("unit", None), "field": ("str?", None), "attributes": ("str?", None),
            "attribute": ("str?", None), "fasttext": ("str?", None),
            "label": ("str", "__label__hq")}

  def validate(self):
    p = self.params
    if p["fraction"] is None:
      raise CurationError("curation step 'top_p': give fraction, in (0, 1] (0.1 = top 10%)")
    given = [k for k in ("field", "attributes", "fasttext") if p[k] is not None]
    if len(given) != 1:
      raise CurationError("curation step 'top_p': give exactly one score source: field "
                          "(a metadata field), attributes (Dolma attribute files, with "
                          f"attribute) or fasttext (a classifier .bin); got {given or 'none'}")
    if p["attributes"] is not None and p["attribute"] is None:
      raise CurationError("curation step 'top_p': attributes needs attribute (the name of "
                          "the score inside each line's 'attributes')")
    self._scores = None

  def check(self, corpus):
    p = self.params
    if p["field"] is not None:
      bad = [i for i, m in enumerate(corpus.metas) if not is_number(m.get(p["field"]))]
      if bad:
        raise CurationError(
            f"curation step 'top_p': score field {p['field']!r} is missing or not a finite "
            f"number in {len(bad)} of {len(corpus)} documents (first: {corpus.origin(bad[0])})")
      self._scores = np.array([float(m[p["field"]]) for m in corpus.metas])
    elif p["attributes"] is not None:
      self._scores = self._attribute_scores(corpus)
    else:
      model = load_fasttext(_resolve(p["fasttext"], corpus.base_dir))
      if p["label"] not in model.get_labels():
        raise CurationError(f"curation step 'top_p': label {p['label']!r} is not one of the "
                            f"classifier's labels {model.get_labels()}")
      self._model = model

  def _attribute_scores(self, corpus) -> np.ndarray:
    p = self.params
    pattern = _resolve(p["attributes"], corpus.base_dir)
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if len(files) != len(corpus.files):
      raise CurationError(f"curation step 'top_p': attributes {p['attributes']!r} gives "
                          f"{len(files)} file(s) for {len(corpus.files)} document file(s); "
                          "give one attributes file per document file, in the same order")
    scores = []
    for f, path in enumerate(files):
      recs = read_records(path, field=None)
      n_docs = int(corpus.file_starts[f + 1] - corpus.file_starts[f])
      if len(recs) != n_docs:
        raise CurationError(f"curation step 'top_p': attributes file {path} has {len(recs)} "
                            f"lines but {corpus.files[f]} has {n_docs} documents; they must "
                            "align line by line")
      for k, rec in enumerate(recs):
        i = int(corpus.file_starts[f]) + k
        doc_id = corpus.metas[i].get("id")
        if doc_id is not None and rec.get("id") is not None and rec["id"] != doc_id:
          raise CurationError(f"curation step 'top_p': {path} line {k + 1} has id "
                              f"{rec['id']!r} but {corpus.origin(i)} has id {doc_id!r}")
        value = (rec.get("attributes") or {}).get(p["attribute"])
        # Dolma attributes are span lists [[start, end, score], ...]; a document-level score
        # is the one span over the document (or a bare number).
        if isinstance(value, list) and value and isinstance(value[0], list) and len(value[0]) == 3:
          value = value[0][2]
        if not is_number(value):
          raise CurationError(f"curation step 'top_p': {path} line {k + 1} has no numeric "
                              f"attribute {p['attribute']!r}")
        scores.append(float(value))
    return np.array(scores, dtype=np.float64)

  def apply(self, corpus, alive, workers=1):
    p = self.params
    if p["fasttext"] is not None:
      scores = fasttext_scores(self._model, [corpus.texts[i] for i in alive.tolist()], p["label"])
    else:
      scores = self._scores[alive]
    n_keep = top_count(len(alive), p["fraction"])
    order = np.argsort(-scores, kind="stable")  # stable: ties go to the earlier document
    keep = np.zeros(len(alive), dtype=bool)
    keep[order[:n_keep]] = True
    cutoff = scores[order[n_keep - 1]] if n_keep else math.inf
    why = [("below_top_p", f"score {scores[j]:.6g} (kept >= {cutoff:.6g})")
           for j in np.flatnonzero(~keep).tolist()]
    return keep, why


def top_count(n: int, fraction: float) -> int:
  """Documents kept by top-p of n: ceil(fraction * n), at least 1 when n > 0."""
  return min(n, max(1 if n else 0, math.ceil(fraction * n - 1e-9)))


def fill_budget(tokens: np.ndarray, budget: int, order: np.ndarray) -> np.ndarray:
  """The positions `order` keeps when documents are taken in that order while they fit:
  one that would pass the budget is skipped and drawing goes on. int64[K].

  tokens: int64[N], the documents' tokens in draw order; the kept tokens sum to <= budget
  and no skipped document fits in what is left.
  """
  taken = np.zeros(len(tokens), dtype=bool)
  left = int(budget)
  smallest_after = np.minimum.accumulate(tokens[::-1])[::-1] if len(tokens) else tokens
  for k, t in enumerate(tokens.tolist()):
    if smallest_after[k] > left:
      break  # nothing later fits
    if t <= left:
      taken[k] = True
      left -= t
  return order[taken]


class Subsample(Step):
  name = "subsample"
  PARAMS = {"mode": ("str", "uniform"), "tokens": ("count?", None), "fraction": ("unit?", None),
            "seed": ("count", 0), "alpha": ("num", 1.0), "features": ("str", "tfidf"),
            "clusters": ("pos", 8), "ngram": ("pos", 1), "max_features": ("pos", 1 << 16),
            "n_init": ("pos", 10)}
  MODES = ("uniform", "length_weighted", "diversity")
  FEATURES = ("tfidf", "hashed")

  def validate(self):
    p = self.params
    if p["mode"] not in self.MODES:
      raise CurationError(f"curation step 'subsample': mode must be one of {self.MODES}, "
                          f"got {p['mode']!r}")
    if p["features"] not in self.FEATURES:
      raise CurationError(f"curation step 'subsample': features must be one of "
                          f"{self.FEATURES}, got {p['features']!r}")
    if (p["tokens"] is None) == (p["fraction"] is None):
      raise CurationError("curation step 'subsample': give exactly one budget: tokens (a "
                          "token budget) or fraction (of the documents)")

  def priority(self, corpus, alive) -> np.ndarray:
    """Positions into `alive` in the order they are taken."""
    p = self.params
    rng = np.random.default_rng([p["seed"], CHAIN_VERSION])
    if p["mode"] == "uniform":
      return rng.permutation(len(alive))
    if p["mode"] == "length_weighted":
      # Efraimidis-Spirakis: sampling without replacement with P ~ tokens^alpha.
      w = corpus.tokens[alive].astype(np.float64) ** p["alpha"]
      keys = np.log(rng.random(len(alive))) / np.maximum(w, 1e-12)
      return np.argsort(-keys, kind="stable")
    labels = self.clusters(corpus, alive)
    # Round-robin across clusters (each in a seeded order): every cluster is drawn from before
    # any is drawn twice.
    perm = rng.permutation(len(alive))
    by_cluster = [perm[labels[perm] == c] for c in range(int(labels.max()) + 1)]
    rank = np.empty(len(alive), dtype=np.int64)
    for members in by_cluster:
      rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))

  def clusters(self, corpus, alive) -> np.ndarray:
    """k-means cluster of each document over TF-IDF or hashed n-gram features: int[len(alive)]."""
    from sklearn.cluster import KMeans  # deferred: heavy import
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
    p = self.params
    texts = [corpus.texts[i] for i in alive.tolist()]
    if p["features"] == "tfidf":
      vec = TfidfVectorizer(ngram_range=(1, p["ngram"]), max_features=p["max_features"],
                            dtype=np.float64)
    else:
      vec = HashingVectorizer(ngram_range=(1, p["ngram"]), n_features=p["max_features"],
                              alternate_sign=False, norm="l2")
    try:
      x = vec.fit_transform(texts)
    except ValueError as e:  # e.g. an empty vocabulary
      raise CurationError(f"curation step 'subsample': cannot build {p['features']} features "
                          f"({e})") from e
    k = min(p["clusters"], len(texts))
    # Several k-means++ starts, the lowest inertia kept: one start can merge planted topics.
    km = KMeans(n_clusters=k, n_init=p["n_init"], random_state=p["seed"], algorithm="lloyd")
    return km.fit_predict(x).astype(np.int64)

  def apply(self, corpus, alive, workers=1):
    p = self.params
    order = self.priority(corpus, alive)
    keep = np.zeros(len(alive), dtype=bool)
    if p["tokens"] is not None:
      keep[fill_budget(corpus.tokens[alive][order], p["tokens"], order)] = True
    else:
      keep[order[:top_count(len(alive), p["fraction"])]] = True
    why = [("not_sampled", f"{p['mode']} sample") for _ in range(int((~keep).sum()))]
    return keep, why
