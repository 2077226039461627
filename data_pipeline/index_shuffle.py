"""Global shuffles as seeded bijections of [0, n), computed per index (no n-sized table).

A permutation of a 10^9-instance corpus would need 8 GB as a table; a Feistel network on
the smallest even power-of-two domain >= n, with cycle walking back into [0, n), gives the
same "every index exactly once per epoch" guarantee in O(1) memory and vectorises in numpy.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

_ROUNDS = 6
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def derive_seed(*parts) -> int:
  """A 63-bit seed from ints and strings (strings enter by CRC32, stable across runs)."""
  ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
  return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _mix64(z: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a cheap, well-mixed uint64 -> uint64 hash."""
  z = (z ^ (z >> np.uint64(30))) * _M1
  z = (z ^ (z >> np.uint64(27))) * _M2
  return z ^ (z >> np.uint64(31))


@functools.lru_cache(maxsize=256)
def _round_keys(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 2**63, size=_ROUNDS, dtype=np.uint64)


def permute(idx, n: int, seed: int) -> np.ndarray:
  """pi(idx) for the seeded bijection pi of [0, n).

  idx: int array in [0, n) -> int64, same shape.
  """
  idx = np.asarray(idx, dtype=np.int64)
  if n <= 0:
    raise ValueError(f"cannot permute an empty range (n={n})")
  if idx.size and (idx.min() < 0 or idx.max() >= n):
    raise IndexError(f"index out of range [0, {n})")
  if n == 1:
    return idx.copy()
  bits = max(2, int(n - 1).bit_length())
  bits += bits % 2  # balanced halves keep the network a bijection on 2^bits
  half = np.uint64(bits // 2)
  mask = np.uint64((1 << (bits // 2)) - 1)
  keys = _round_keys(seed)
  x = idx.astype(np.uint64).ravel()
  out = np.empty_like(x)
  todo = np.arange(x.size)
  # Cycle walking: re-encrypt values that land outside [0, n); the domain is < 4n, so a few
  # passes finish every element, and the restriction to [0, n) stays a bijection.
  while todo.size:
    left, right = x[todo] >> half, x[todo] & mask
    for k in keys:
      left, right = right, left ^ (_mix64(right ^ k) & mask)
    y = (left << half) | right
    done = y < np.uint64(n)
    out[todo[done]] = y[done]
    x[todo[~done]] = y[~done]
    todo = todo[~done]
  return out.astype(np.int64).reshape(idx.shape)


def uniform(idx, seed: int) -> np.ndarray:
  """A seeded hash of each index as a float64 in [0, 1): the same (index, seed), the same value.

  idx: int array -> float64, same shape.
  """
  z = np.asarray(idx, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(seed)
  return (_mix64(z) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
