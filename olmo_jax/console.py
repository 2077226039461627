"""What a training run tells its user: the metrics log (metrics.jsonl, TensorBoard event files)
and the console (a line per logged step, above a tqdm progress bar when there is one)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable

import jax


class MetricsLogger:
  """Writes metrics to workdir/metrics.jsonl, TensorBoard event files and stdout."""

  def __init__(self, workdir: str | None, enabled: bool = True):
    self._jsonl = None
    self._tb = None
    if workdir and enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self._jsonl.flush()
    if self._tb:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)]
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                         summary=summary_pb2.Summary(value=values)))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def format_metrics(step: int, total: int, m: dict[str, float]) -> str:
  parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}"]
  if "lr" in m:
    parts.append(f"lr {m['lr']:.3e}")
  parts.append(f"gnorm {m['grad_norm']:.3f}")
  if "tokens_per_s" in m:
    parts.append(f"tok/s {m['tokens_per_s']:,.0f}")
  if m.get("mfu"):
    parts.append(f"mfu {100 * m['mfu']:.1f}%")
  if "eval_loss" in m:
    parts.append(f"eval_loss {m['eval_loss']:.4f}")
  return " | ".join(parts)


class Console:
  """Lines for the user: above a tqdm progress bar when there is one, else via print_fn."""

  def __init__(self, start: int, total: int, *, progress_bar: bool = True,
               print_fn: Callable[[str], None] = print):
    self.is_main = jax.process_index() == 0
    self._print = print_fn
    self.bar = None
    if progress_bar and self.is_main and start < total:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                      file=sys.stdout, mininterval=1.0)

  def progress(self, step: int, loss: float) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

  def print(self, line: str, every_process: bool = False) -> None:
    if not (self.is_main or every_process):
      return
    self.bar.write(line) if self.bar is not None else self._print(line)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


