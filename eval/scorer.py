"""Batched log-likelihood of (context, continuation) requests, and a greedy decoder, with the
training model's own forward pass (olmo_jax.model through olmo_jax.decode).

How a batch of requests is scored:
1. Each request is left-truncated as lm-evaluation-harness does: the last max_length + 1
   tokens of context + continuation are kept (the continuation is never cut first).
2. Requests with the same (truncated) context form a group: the context runs ONCE (prefill,
   keeping each layer's keys and values) and all its continuations run together against
   that cache (extend). Multiple-choice questions thus pay for their long 5-shot context
   once instead of once per choice, and the vocabulary head runs only at the continuation
   positions.
3. Groups are bucketed by (context length, packed width of their continuations), each
   rounded up to a few fixed sizes, and batched with a fixed number of rows per bucket, so
   only a handful of shapes ever compile. Rows are sharded over all devices (batch axis);
   parameters are replicated.

Per-token log-probabilities are float32 (olmo_jax.model.token_logprobs: logit minus
logsumexp, as the training run's held-out loss computes them), summed per request in float64
on the host; `is_greedy` says whether every continuation token was the argmax, as
lm-eval's API wants.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from olmo_jax import decode, sharding
from olmo_jax import model as model_lib
from olmo_jax.model import ModelConfig

CONTEXT_BUCKETS = (128, 256, 512, 1024, 2048, 4096)
# Width of a row's packed continuation tokens (all its continuations back to back): powers
# of two, so a row wastes less than half its width (and its vocabulary-head work) on padding.
PACKED_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
MAX_SHARED = 8  # continuations per prefill row; a context shared by more is prefilled again
SHARED_WIDTH = 256  # packed width a row of a context shared by more than MAX_SHARED fills


def _bucket(n: int, buckets: Sequence[int], cap: int | None = None) -> int:
  for b in buckets:
    if n <= b and (cap is None or b <= cap):
      return b
  if cap is not None and n <= cap:
    return cap
  return int(2 ** math.ceil(math.log2(max(n, 1))))


def truncate(context: Sequence[int], continuation: Sequence[int], max_length: int
             ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(context, continuation) cut to the last max_length + 1 tokens of their concatenation.

  The context keeps at least one token (it predicts the first continuation token).
  """
  if not context:
    raise ValueError("a request needs a non-empty context (use the EOS token for none)")
  whole = list(context) + list(continuation)
  keep = whole[-(max_length + 1):]
  n_cont = min(len(continuation), len(keep) - 1)
  return tuple(keep[:len(keep) - n_cont]), tuple(keep[len(keep) - n_cont:])


@dataclasses.dataclass
class _Group:
  context: tuple[int, ...]
  members: list[tuple[int, tuple[int, ...]]]  # (request index, continuation tokens)


def _split(g: _Group) -> list[_Group]:
  """A group as prefill rows of at most MAX_SHARED continuations.

  A context shared by many requests (OLMES's bare "Answer:" prompt of the unconditional
  requests, for every document) is prefilled once per row: its continuations, shortest
  first, fill rows up to SHARED_WIDTH packed tokens, so that the rows' widths sit just under
  a bucket instead of anywhere below the next one.
  """
  if len(g.members) <= MAX_SHARED:
    return [g]
  parts: list[list] = [[]]
  width = 0
  for m in sorted(g.members, key=lambda m: len(m[1])):
    n = len(m[1]) - 1
    if parts[-1] and (len(parts[-1]) == MAX_SHARED or width + n > SHARED_WIDTH):
      parts.append([])
      width = 0
    parts[-1].append(m)
    width += n
  return [_Group(g.context, p) for p in parts]


class Scorer:
  """Scores requests with params of one model; jitted functions are cached per shape.

  batch_tokens: rough number of context tokens per prefill batch (rows = batch_tokens /
  context bucket, at least one per device).
  """

  def __init__(self, cfg: ModelConfig, params: dict[str, Any], *, max_length: int | None = None,
               batch_tokens: int = 8192, mesh=None):
    cfg.validate()
    self.cfg = cfg
    self.max_length = min(max_length or cfg.max_seq_len, cfg.max_seq_len)
    self.batch_tokens = batch_tokens
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.n_dev = self.mesh.devices.size
    self.set_params(params)
    self._rows = NamedSharding(self.mesh, P(("data", "fsdp")))
    self.compiled_shapes: set[tuple] = set()

  def set_params(self, params: dict[str, Any]) -> None:
    """Scores with these params from now on (same shapes: nothing recompiles)."""
    self.params = jax.device_put(params, sharding.replicated(self.mesh))

  # ------------------------------------------------------------------ log-likelihood

  def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                    progress: Callable[[int], None] | None = None,
                    on_batch: Callable[[list[tuple[int, float, bool]]], None] | None = None
                    ) -> list[tuple[float, bool]]:
    """(summed log-prob, is_greedy) of each (context ids, continuation ids) request.

    on_batch: called after each batch with its (request index, log-prob, is_greedy) triples
    (eval/resume.py saves them; it may raise to stop between batches).
    """
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    groups: dict[tuple[int, ...], _Group] = {}
    for i, (ctx, cont) in enumerate(requests):
      if len(cont) == 0:
        out[i] = (0.0, True)
        continue
      c, k = truncate(ctx, cont, self.max_length)
      groups.setdefault(c, _Group(c, [])).members.append((i, k))
    by_shape: dict[tuple[int, int, int], list[_Group]] = {}
    for g in groups.values():
      for part in _split(g):
        by_shape.setdefault(self._shape_of(part), []).append(part)
    for shape in sorted(by_shape):
      gs = sorted(by_shape[shape], key=lambda g: len(g.context))
      rows = self._rows_for(shape)
      for start in range(0, len(gs), rows):
        batch = gs[start:start + rows]
        # A short last batch is padded to a power of two rows, not to `rows`: at most a
        # few more compiled shapes instead of up to rows - 1 dummy rows of compute.
        n = rows if len(batch) == rows else min(rows, self._pow2_rows(len(batch)))
        done = [(i, lp, greedy) for (i, _), lp, greedy in self._score_batch(shape, n, batch)]
        for i, lp, greedy in done:
          out[i] = (lp, greedy)
        if on_batch is not None:
          on_batch(done)
        if progress is not None:
          progress(sum(len(g.members) for g in batch))
    return out  # type: ignore[return-value]

  def _shape_of(self, g: _Group) -> tuple[int, int]:
    p = _bucket(len(g.context), CONTEXT_BUCKETS, self.max_length)
    w = _bucket(sum(len(k) - 1 for _, k in g.members), PACKED_BUCKETS)
    return p, w

  def _rows_for(self, shape: tuple[int, int]) -> int:
    p, w = shape
    # Bounded by the prefill tokens and by the packed continuation tokens, whose attention
    # scores grow with w * (p + w).
    rows = max(1, self.batch_tokens // max(p, 2 * w, 1))
    return -(-rows // self.n_dev) * self.n_dev

  def _pow2_rows(self, n: int) -> int:
    rows = 1 << max(0, (n - 1).bit_length())
    return -(-rows // self.n_dev) * self.n_dev

  def _score_batch(self, shape, rows: int, batch: list[_Group]):
    """Yields ((request index, cont), summed log-prob, is_greedy) for every member."""
    p, w = shape
    n_real = len(batch)
    batch = batch + [batch[-1]] * (rows - n_real)  # fixed row count: one compiled shape
    wb = max(w, 1)
    ids = np.zeros((rows, p), np.int32)
    ctx_len = np.zeros((rows,), np.int32)
    first = np.zeros((rows, MAX_SHARED), np.int32)
    packed = np.zeros((rows, wb), np.int32)  # continuation tokens but the last, packed
    targets = np.zeros((rows, wb), np.int32)  # the token each packed position predicts
    member = np.full((rows, wb), -1, np.int32)  # which continuation a position is in
    step = np.zeros((rows, wb), np.int32)  # its offset within that continuation
    for r, g in enumerate(batch):
      ids[r, :len(g.context)] = g.context
      ctx_len[r] = len(g.context)
      at = 0
      for j, (_, k) in enumerate(g.members):
        first[r, j] = k[0]
        n = len(k) - 1
        packed[r, at:at + n] = k[:-1]
        targets[r, at:at + n] = k[1:]
        member[r, at:at + n] = j
        step[r, at:at + n] = np.arange(n)
        at += n
    put = lambda x: jax.device_put(x, self._rows)
    self.compiled_shapes.add((rows,) + shape)
    res = jax.device_get(self._fn(w > 0)(self.params, put(ids), put(ctx_len), put(first),
                                         put(packed), put(targets), put(member), put(step)))
    # `...`: a PackedScorer's results carry a leading replica axis, summed alike.
    lp0 = np.asarray(res[0], np.float64)
    for r, g in enumerate(batch[:n_real]):
      for j, m in enumerate(g.members):
        lp, greedy = lp0[..., r, j], res[1][..., r, j]
        if w > 0:
          mine = member[r] == j
          lp = lp + np.asarray(res[2][..., r, :], np.float64)[..., mine].sum(-1)
          greedy = greedy & np.all(res[3][..., r, :][..., mine], axis=-1)
        yield m, self._value(lp, float), self._value(greedy, bool)

  def _fn(self, extend: bool):
    return _score_fn(self.cfg, extend)

  @staticmethod
  def _value(x, kind):
    return kind(x)


class PackedScorer(Scorer):
  """Scores the same requests with K models of one shape in one pass: one tokenization and
  batching, the weights stacked on a leading replica axis (the prefill and extend of the
  Scorer, vmapped over the weights). Each replica's scores equal a Scorer's of its params
  within float rounding.

  params: a pytree whose leaves are [K, ...] (olmo_jax.pack.stack of K params).
  """

  def __init__(self, cfg: ModelConfig, params: dict[str, Any], **kw):
    super().__init__(cfg, params, **kw)
    self.replicas = int(jax.tree.leaves(params)[0].shape[0])

  def _fn(self, extend: bool):
    return _packed_score_fn(self.cfg, extend)

  @staticmethod
  def _value(x, kind):
    return np.asarray(x, np.float64 if kind is float else bool)

  def loglikelihood_replicas(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                             progress: Callable[[int], None] | None = None
                             ) -> list[list[tuple[float, bool]]]:
    """Per replica, (summed log-prob, is_greedy) of each request (Scorer.loglikelihood)."""
    out = self.loglikelihood(requests, progress=progress)
    k = self.replicas
    lps = [np.broadcast_to(lp, (k,)) for lp, _ in out]
    greedy = [np.broadcast_to(g, (k,)) for _, g in out]
    return [[(float(lp[i]), bool(g[i])) for lp, g in zip(lps, greedy)] for i in range(k)]


@functools.lru_cache(maxsize=None)
def _score_fn(cfg: ModelConfig, extend: bool):
  """Jitted scorer of one batch: prefill the contexts, extend with the packed continuations.

  Returns the first continuation tokens' (log-prob, is_greedy), each [G, MAX_SHARED], and
  with `extend` also those of every packed position, each [G, W] (summed on the host in
  float64: a float32 sum of 50 tokens at ~10 nats each is only good to ~1e-4).
  """

  @jax.jit
  def score(params, ids_GxP, ctx_len_G, first_GxM, packed_GxW, tgt_GxW, member_GxW, step_GxW):
    G, Pn = ids_GxP.shape
    hidden, k_N, v_N = decode.prefill(cfg, params, ids_GxP)
    last_GxD = jnp.take_along_axis(hidden, (ctx_len_G - 1)[:, None, None], axis=1)[:, 0]
    # The last context position predicts every continuation's first token.
    lp, greedy = model_lib.token_logprobs(decode.logits(cfg, params, last_GxD), first_GxM)
    if not extend:
      return lp, greedy
    positions = ctx_len_G[:, None] + step_GxW
    past_mask = jnp.broadcast_to((jnp.arange(Pn)[None, :] < ctx_len_G[:, None])[:, None, :],
                                 (G, step_GxW.shape[1], Pn))
    self_mask = ((member_GxW[:, :, None] == member_GxW[:, None, :])
                 & (step_GxW[:, None, :] <= step_GxW[:, :, None]))
    h, _, _ = decode.extend(cfg, params, packed_GxW, positions, k_N, v_N, past_mask, self_mask)

    def head(args):  # one row at a time: never a [G, W, V] logits tensor
      h_WxD, tgt_W = args
      tok_lp, tok_greedy = model_lib.token_logprobs(decode.logits(cfg, params, h_WxD),
                                                    tgt_W[:, None])
      return tok_lp[:, 0], tok_greedy[:, 0]

    tok_lp, tok_greedy = jax.lax.map(head, (h, tgt_GxW))
    return lp, greedy, tok_lp, tok_greedy

  return score


@functools.lru_cache(maxsize=None)
def _packed_score_fn(cfg: ModelConfig, extend: bool):
  """_score_fn over params with a leading replica axis; every output gains that axis."""
  return jax.jit(jax.vmap(_score_fn(cfg, extend), in_axes=(0,) + (None,) * 7))


# ------------------------------------------------------------------------------ decoding

@functools.lru_cache(maxsize=None)
def _decode_fns(cfg: ModelConfig):
  @jax.jit
  def start(params, ids_BxP, len_B):
    hidden, k_N, v_N = decode.prefill(cfg, params, ids_BxP)
    last = jnp.take_along_axis(hidden, (len_B - 1)[:, None, None], axis=1)[:, 0]
    return jnp.argmax(decode.logits(cfg, params, last), axis=-1).astype(jnp.int32), k_N, v_N

  @jax.jit
  def step(params, tok_B, pos_B, k_N, v_N):
    N, B, S = k_N.shape[:3]
    past_mask = (jnp.arange(S)[None, :] < pos_B[:, None])[:, None, :]
    self_mask = jnp.ones((B, 1, 1), bool)
    h, k_new, v_new = decode.extend(cfg, params, tok_B[:, None], pos_B[:, None], k_N, v_N,
                                    past_mask, self_mask)
    rows = jnp.arange(B)
    k_N = k_N.at[:, rows, pos_B].set(k_new[:, :, 0])
    v_N = v_N.at[:, rows, pos_B].set(v_new[:, :, 0])
    nxt = jnp.argmax(decode.logits(cfg, params, h[:, 0]), axis=-1).astype(jnp.int32)
    return nxt, k_N, v_N

  return start, step


def greedy_generate(scorer: Scorer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    stop: Callable[[list[int]], bool] | None = None,
                    eos_id: int | None = None) -> list[list[int]]:
  """Greedy continuations (token ids) of each prompt with a KV cache.

  Each prompt keeps its last max_length - max_new_tokens tokens. Generation of a row ends
  at eos_id, when stop(tokens so far) is true, or after max_new_tokens.
  """
  cfg = scorer.cfg
  max_new = max(1, min(max_new_tokens, scorer.max_length - 1))
  keep = scorer.max_length - max_new
  prompts = [list(p)[-keep:] for p in prompts]
  start, step = _decode_fns(cfg)
  outs: list[list[int]] = [[] for _ in prompts]
  rows = max(scorer.n_dev, 8)
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  for b0 in range(0, len(order), rows):
    idx = order[b0:b0 + rows]
    p = _bucket(max(len(prompts[i]) for i in idx), CONTEXT_BUCKETS, scorer.max_length)
    cache = p + _bucket(max_new, PACKED_BUCKETS)
    ids = np.zeros((rows, p), np.int32)
    lens = np.ones((rows,), np.int32)
    for r, i in enumerate(idx):
      ids[r, :len(prompts[i])] = prompts[i]
      lens[r] = len(prompts[i])
    tok, k_N, v_N = start(scorer.params, ids, lens)
    pad = ((0, 0), (0, 0), (0, cache - p), (0, 0), (0, 0))
    k_N, v_N = jnp.pad(k_N, pad), jnp.pad(v_N, pad)
    pos = lens.copy()
    done = np.zeros((rows,), bool)
    done[len(idx):] = True
    for _ in range(max_new):
      tok_h = np.asarray(jax.device_get(tok))
      for r, i in enumerate(idx):
        if done[r]:
          continue
        if eos_id is not None and tok_h[r] == eos_id:
          done[r] = True
          continue
        outs[i].append(int(tok_h[r]))
        if len(outs[i]) >= max_new or (stop is not None and stop(outs[i])):
          done[r] = True
      if done.all():
        break
      tok, k_N, v_N = step(scorer.params, tok, jnp.asarray(pos), k_N, v_N)
      pos = pos + 1
  return outs
