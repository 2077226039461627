"""Token ids of (context, continuation) requests, split as lm-evaluation-harness splits them,
and the errors of the evaluation layer (a bad command line, requests a model cannot score).

It sits below eval/evaluation.py and eval/harness.py, which both use it.
"""

from __future__ import annotations

from typing import Sequence

from lm_eval.api.model import TemplateLM

from data_pipeline.tokenizer import EOS_TOKEN_ID


class UsageError(ValueError):
  pass


class ScoreError(ValueError):
  """Requests the model cannot score (token ids past its vocabulary), or non-finite scores."""

class Encoder:
  """(context, continuation) texts -> token ids, split exactly as lm-eval's TemplateLM splits
  them (lm_eval/api/model.py), so `eval.run` and lm-eval's `hf` model score the same tokens.

  A non-empty context goes through `TemplateLM._encode_pair` itself: trailing context spaces
  move to the continuation, the pair is encoded whole and the context's own tokens are cut
  off. An empty context takes TemplateLM.loglikelihood's rule: the prefix token (EOS) is the
  context, unless the continuation starts with it. A context of only spaces is empty once its
  spaces moved (lm-eval would leave no token to condition on), so the same rule applies.
  Contexts are cached (a document's choices share one); the whole texts are encoded in one
  batch, as before lm-eval's split.
  """

  backend = "causal"  # TemplateLM._encode_pair reads it

  def __init__(self, tokenizer, eos_id: int = EOS_TOKEN_ID):
    self.tok = tokenizer
    self.prefix_token_id = eos_id
    self._ctx: dict[str, list[int]] = {}
    self._wholes: dict[str, list[int]] = {}

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
    """Token ids of a string (TemplateLM's tokenizer hook); None means the tokenizer's own
    special-token handling."""
    if add_special_tokens is False:
      return self.tok.encode(string, add_special_tokens=False).ids
    ids = self._wholes.get(string)
    if ids is None:
      ids = self._ctx.get(string)
    if ids is None:
      ids = self._ctx[string] = self.tok.encode(string).ids
    return ids

  def _empty_context(self, continuation: str) -> tuple[list[int], list[int]]:
    cont = self.tok_encode(continuation, add_special_tokens=False)
    if cont and cont[0] == self.prefix_token_id:
      return cont[:1], cont[1:]
    return [self.prefix_token_id], cont

  def pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    wholes = list(dict.fromkeys(c + k for c, k in pairs if c.strip()))
    self._wholes = {w: e.ids for w, e in zip(wholes, self.tok.encode_batch(wholes))}
    try:
      return [TemplateLM._encode_pair(self, c, k) if c.strip() else self._empty_context(c + k)
              for c, k in pairs]
    finally:
      self._wholes = {}
