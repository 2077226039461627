"""benchmarks/bench_train_gpu.py on CPU: both sides run, report tokens/s, start at the same loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "bench_train_gpu.py")


def _run(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
  out = tmp_path / "rows.jsonl"
  p = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--tiny", "--out", str(out),
                      *extra], capture_output=True, text=True, timeout=300)
  rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
  return p, rows


def _check(p, rows) -> None:
  assert p.returncode == 0, p.stdout + p.stderr
  by_impl = {r["impl"]: r for r in rows if not r.get("summary")}
  assert set(by_impl) == {"olmo_jax", "torch"}, rows
  for r in by_impl.values():
    assert "error" not in r, r
    assert r["tokens_per_s_per_device"] > 0 and r["step_s"] > 0
    assert r["params_n"] > 0 and r["mfu"] is None  # no peak is known for a CPU
  # Our initial weights went into the torch model through olmo_jax.hf: same first loss.
  ours, ref = by_impl["olmo_jax"]["first_loss"], by_impl["torch"]["first_loss"]
  assert abs(ours - ref) < 1e-3, (ours, ref)
  (summary,) = [r for r in rows if r.get("summary")]
  assert summary["ratio_ours_over_torch"] == pytest.approx(
      by_impl["olmo_jax"]["tokens_per_s_per_device"] / by_impl["torch"]["tokens_per_s_per_device"])
  assert "ours (auto) / torch" in p.stdout and "MFU not computed" in p.stdout


def test_tiny_cpu_both_sides_same_first_loss(tmp_path):
  # torch.compile's first CPU build takes about a minute here; the compiled path is the slow test.
  _check(*_run(tmp_path, "--no-torch_compile"))


@pytest.mark.slow
def test_tiny_cpu_torch_compiled(tmp_path):
  _check(*_run(tmp_path))


def test_bad_size_is_one_line_error():
  p = subprocess.run([sys.executable, SCRIPT, "--sizes", "2B"], capture_output=True, text=True,
                     timeout=60)
  assert p.returncode == 2 and "--sizes 2B: no benchmark plan" in p.stderr


def test_gpu_without_cuda_fails_fast():
  import torch
  if torch.cuda.is_available():
    pytest.skip("this host has CUDA")
  p = subprocess.run([sys.executable, SCRIPT, "--sizes", "150M"], capture_output=True,
                     text=True, timeout=60)
  assert p.returncode == 2, p.stderr
  assert "torch" in p.stderr and "no CUDA device" in p.stderr
  assert "Traceback" not in p.stderr


def test_gpu_without_jax_gpu_fails_fast():
  p = subprocess.run([sys.executable, SCRIPT, "--sizes", "150M", "--no-torch"],
                     capture_output=True, text=True, timeout=60,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert p.returncode == 2 and "JAX sees no GPU" in p.stderr, p.stderr


def test_worker_timeout_stops_a_side(tmp_path):
  p, rows = _run(tmp_path, "--no-torch", "--worker_timeout", "0.5")
  assert p.returncode == 1 and "ours side ran past its --worker_timeout of 0.5 s" in p.stderr
  assert rows == []
