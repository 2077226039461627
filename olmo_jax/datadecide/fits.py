"""Curve fits of the scaling laws: power laws in compute (2 and 3 parameters) or in N and D (5),
the sigmoid from loss to a metric; Huber loss on log residuals, L-BFGS-B."""

from __future__ import annotations

import itertools
import math

import numpy as np
import threadpoolctl
from scipy import optimize

HUBER_DELTA = 1e-3


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
  """Huber loss of residuals r (quadratic inside delta, linear outside)."""
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _fit(model, y: np.ndarray, starts: list[np.ndarray], bounds, delta: float,
         log_residuals: bool) -> tuple[np.ndarray, float]:
  """Minimises sum Huber(residual) with L-BFGS-B from each start; the best result.

  `model(theta)` returns (prediction [n], d prediction / d theta [n, p]).
  """
  y = np.asarray(y, np.float64)
  ly = np.log(y) if log_residuals else None

  def objective(theta):
    pred, jac = model(theta)
    if log_residuals:
      if np.any(pred <= 0):
        return 1e30, np.zeros_like(theta)
      r = np.log(pred) - ly
      dr = jac / pred[:, None]
    else:
      r, dr = pred - y, jac
    return float(huber(r, delta).sum()), np.clip(r, -delta, delta) @ dr

  best, best_f = None, np.inf
  # L-BFGS-B's BLAS calls are on tiny vectors: extra BLAS threads only spin (33x slower
  # on a loaded 2-core machine).
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    for x0 in starts:
      res = optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                              options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-11})
      if np.isfinite(res.fun) and res.fun < best_f:
        best, best_f = res.x, float(res.fun)
  if best is None:
    raise ValueError("scaling-law fit failed from every starting point")
  return best, best_f


def _fit_least_squares(model, y: np.ndarray, starts: list[np.ndarray], bounds
                       ) -> tuple[np.ndarray, float]:
  """Minimises half the sum of squared residuals (trust-region least squares, analytic
  Jacobian) from each start; the best result. `model` as in _fit."""
  y = np.asarray(y, np.float64)
  lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
  best, best_f = None, np.inf
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    for x0 in starts:
      res = optimize.least_squares(lambda th: model(th)[0] - y, np.clip(x0, lo, hi),
                                   jac=lambda th: model(th)[1], bounds=(lo, hi),
                                   method="trf", xtol=1e-10, ftol=1e-12, gtol=1e-10,
                                   max_nfev=500)
      f = 0.5 * float(res.fun @ res.fun)
      if np.isfinite(f) and f < best_f - 1e-15:
        best, best_f = res.x, f
  if best is None:
    raise ValueError("least-squares fit failed from every starting point")
  return best, best_f


def fit_power_law_3p(c: np.ndarray, loss: np.ndarray, delta: float = HUBER_DELTA) -> dict:
  """Fits L(C) = A / C^alpha + E; returns {A, alpha, E, objective}.

  c: compute in FLOPs [n]; loss: [n] (positive).
  """
  c, loss = np.asarray(c, np.float64), np.asarray(loss, np.float64)
  x = np.log(c)
  xm = float(x.mean())
  xc = x - xm

  def model(th):  # th = (log A' , alpha, log E) with A' = A * exp(-alpha * xm)
    la, al, le = th
    t1, t2 = np.exp(la - al * xc), np.exp(le)
    pred = t1 + t2
    return pred, np.stack([t1, -xc * t1, np.full_like(t1, t2)], 1)

  lo = float(loss.min())
  starts = [np.array([math.log(max(float(loss.mean()) - f * lo, 1e-12)), al,
                      math.log(max(f * lo, 1e-12))])
            for al in (0.05, 0.2, 0.5) for f in (0.5, 0.9)]
  bounds = [(-60.0, 60.0), (0.0, 5.0), (math.log(lo * 1e-6), math.log(float(loss.max())))]
  th, f = _fit(model, loss, starts, bounds, delta, log_residuals=bool(lo > 0))
  la, al, le = th
  return {"A": float(math.exp(la + al * xm)), "alpha": float(al), "E": float(math.exp(le)),
          "objective": f, "n_points": int(len(c))}


def fit_power_law_2p(c: np.ndarray, loss: np.ndarray, delta: float = HUBER_DELTA) -> dict:
  """Fits L(C) = A / C^alpha (DataDecide's 2_param: no irreducible term); {A, alpha, E=0}.

  c: compute in FLOPs [n]; loss: [n] (positive).
  """
  c, loss = np.asarray(c, np.float64), np.asarray(loss, np.float64)
  xc = np.log(c) - float(np.log(c).mean())

  def model(th):
    t1 = np.exp(th[0] - th[1] * xc)
    return t1, np.stack([t1, -xc * t1], 1)

  starts = [np.array([math.log(float(loss.mean())), al]) for al in (0.05, 0.2, 0.5)]
  th, f = _fit(model, loss, starts, [(-60.0, 60.0), (0.0, 5.0)], delta, log_residuals=True)
  return {"A": float(math.exp(th[0] + th[1] * float(np.log(c).mean()))),
          "alpha": float(th[1]), "E": 0.0, "objective": f, "n_points": int(len(c))}


def power_law_3p(c, p: dict) -> np.ndarray:
  """L(C) = A / C^alpha + E."""
  return p["A"] * np.asarray(c, np.float64) ** (-p["alpha"]) + p["E"]


def fit_power_law_5p(n: np.ndarray, d: np.ndarray, loss: np.ndarray,
                     delta: float = HUBER_DELTA) -> dict:
  """Fits L(N, D) = A / N^alpha + B / D^beta + E; returns {A, alpha, B, beta, E, objective}.

  n: parameters [k]; d: training tokens [k]; loss: [k] (positive).
  """
  n, d, loss = (np.asarray(v, np.float64) for v in (n, d, loss))
  xn, xd = np.log(n), np.log(d)
  nm, dm = float(xn.mean()), float(xd.mean())
  xn, xd = xn - nm, xd - dm

  def model(th):
    la, al, lb, be, le = th
    t1, t2, t3 = np.exp(la - al * xn), np.exp(lb - be * xd), np.exp(le)
    pred = t1 + t2 + t3
    return pred, np.stack([t1, -xn * t1, t2, -xd * t2, np.full_like(t1, t3)], 1)

  lo, mean = float(loss.min()), float(loss.mean())
  starts = []
  for al, be, f in itertools.product((0.1, 0.5), (0.1, 0.5), (0.5, 0.9)):
    part = math.log(max((mean - f * lo) / 2, 1e-12))
    starts.append(np.array([part, al, part, be, math.log(max(f * lo, 1e-12))]))
  bounds = [(-60.0, 60.0), (0.0, 5.0), (-60.0, 60.0), (0.0, 5.0),
            (math.log(lo * 1e-6), math.log(float(loss.max())))]
  th, f = _fit(model, loss, starts, bounds, delta, log_residuals=bool(lo > 0))
  la, al, lb, be, le = th
  return {"A": float(math.exp(la + al * nm)), "alpha": float(al),
          "B": float(math.exp(lb + be * dm)), "beta": float(be), "E": float(math.exp(le)),
          "objective": f, "n_points": int(len(n))}


def power_law_5p(n, d, p: dict) -> np.ndarray:
  """L(N, D) = A / N^alpha + B / D^beta + E."""
  n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
  return p["A"] * n ** (-p["alpha"]) + p["B"] * d ** (-p["beta"]) + p["E"]


def fit_sigmoid(loss: np.ndarray, acc: np.ndarray, delta: float = HUBER_DELTA,
                least_squares: bool = False) -> dict:
  """Fits Acc(L) = a / (1 + exp(-k (L - L0))) + b; returns {a, k, L0, b, objective}.

  loss: [n]; acc: [n]. Accuracy falls as loss rises, so k comes out negative.
  least_squares: minimise the sum of squared residuals (DataDecide's step 2, a curve fit)
  instead of the Huber loss on log residuals.
  """
  x, y = np.asarray(loss, np.float64), np.asarray(acc, np.float64)
  span = float(np.ptp(x)) or 1.0
  lo, hi = float(y.min()), float(y.max())
  positive = lo > 0

  def model(th):
    a, k, l0, b = th
    z = np.clip(-k * (x - l0), -500, 500)
    s = 1.0 / (1.0 + np.exp(z))
    ds = s * (1 - s)
    pred = a * s + b
    return pred, np.stack([s, a * ds * (x - l0), -a * ds * k, np.ones_like(s)], 1)

  yr = max(hi - lo, 1e-6)
  starts = [np.array([yr * fa, -kk / span, float(np.quantile(x, q)), max(lo * fb, 1e-9)])
            for fa in (1.0, 2.0) for kk in (2.0, 8.0, 30.0) for q in (0.25, 0.5, 0.75)
            for fb in (0.5, 0.95)]
  top = max(abs(hi), abs(lo), 1e-6)
  bounds = [(0.0, 10 * top), (-1e4 / span, 1e4 / span), (float(x.min()) - 5 * span,
                                                          float(x.max()) + 5 * span),
            ((1e-9 if positive else -10 * top), 10 * top)]
  if least_squares:  # a trust-region solver needs fewer starts than the Huber fit's grid
    few = [st for st in starts if st[0] == yr and abs(st[2] - np.quantile(x, 0.5)) < 1e-12
           and st[3] == max(lo * 0.5, 1e-9)]
    th, f = _fit_least_squares(model, y, few, bounds)
  else:
    th, f = _fit(model, y, starts, bounds, delta, log_residuals=positive)
  a, k, l0, b = th
  return {"a": float(a), "k": float(k), "L0": float(l0), "b": float(b), "objective": f,
          "n_points": int(len(x))}


def sigmoid(loss, p: dict) -> np.ndarray:
  """Acc(L) = a / (1 + exp(-k (L - L0))) + b."""
  x = np.asarray(loss, np.float64)
  return p["a"] / (1.0 + np.exp(np.clip(-p["k"] * (x - p["L0"]), -500, 500))) + p["b"]
