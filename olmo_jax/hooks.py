"""The training loop's hooks (Levanter-style periodic actions): logging, callbacks such as
in-loop evaluation, stopping on a signal, checkpointing. The loop is trainer.Loop; the entry
point chooses the hooks, so nothing plugs into the loop's body."""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

import jax

from olmo_jax.console import MetricsLogger, format_metrics

if TYPE_CHECKING:  # annotations only: the loop imports the hooks
  from olmo_jax.trainer import Loop, State


class Hook:
  """A periodic action of the loop (Levanter-style); subclasses override what they need.

  `__call__(loop)` runs after each step where `due(loop)` holds (every `every` steps by
  default), in the order the hooks were given, on the state just dispatched. `on_metrics`
  sees each step's host metrics once they are read (one step late); `start` and `end`
  bracket the loop (`end` also on errors).
  """

  every: int = 0

  def due(self, loop: Loop) -> bool:
    return self.every > 0 and loop.step % self.every == 0

  def __call__(self, loop: Loop) -> None:
    pass

  def on_metrics(self, loop: Loop, step: int, host: dict[str, float], extra: dict[str, float],
                 force: bool) -> None:
    pass

  def start(self, loop: Loop) -> None:
    pass

  def end(self, loop: Loop) -> None:
    pass


class Callback(Protocol):
  """`fn(step, state)` after a step is dispatched; returns extra metrics to log (or None)."""

  def __call__(self, step: int, state: State) -> dict[str, float] | None: ...


class CallbackHook(Hook):
  """A Callback every `every` steps (e.g. in-loop evaluation built by the entry point)."""

  def __init__(self, fn: Callback, every: int = 1):
    self.fn, self.every = fn, every

  def __call__(self, loop: Loop) -> None:
    loop.add_metrics(self.fn(loop.step, loop.state) or {})


class LossRise:
  """Flags a diverging run whose loss a long warmup still keeps finite (non-finite losses
  stop the run on their own: UpdatePolicy).

  Rule: the logged cross-entropy is above the run's first logged value by more than `margin`
  nats at `patience` consecutive log points. One nat above the start means e times less
  probability on the data than at the start (at initialisation: worse than a uniform guess
  over the vocabulary), which steady training never gets back to; a lone spike does not count.
  Said once per run.
  """

  def __init__(self, margin: float = 1.0, patience: int = 3):
    self.margin, self.patience = margin, patience
    self.start, self.count, self.said = None, 0, False

  def update(self, step: int, m: dict[str, float]) -> str | None:
    """The warning to give after this log point's metrics `m`, or None."""
    loss = m.get("ce", m.get("loss"))
    if self.said or loss is None or not math.isfinite(loss):
      return None
    if self.start is None:
      self.start = loss
      return None
    self.count = self.count + 1 if loss > self.start + self.margin else 0
    if self.count < self.patience:
      return None
    self.said = True
    lr = f" (lr {m['lr']:.3g})" if "lr" in m else ""
    return (f"loss {loss:.4g} at step {step}{lr} has stayed more than {self.margin:g} nat above "
            f"its first logged value {self.start:.4g} for {self.patience} logged steps: the "
            f"run is diverging; lower train.lr and start again")


class LogHook(Hook):
  """Every `every` steps, at the end and with extra metrics: throughput and MFU added, the
  metrics written to the logger and a line to the console."""

  def __init__(self, every: int, *, tokens_per_step: int, flops_per_token: float = 0.0,
               peak_flops: float = 0.0, logger: MetricsLogger | None = None):
    self.log_every, self.tokens_per_step = every, tokens_per_step
    self.flops_per_token, self.peak_flops, self.logger = flops_per_token, peak_flops, logger
    self._t0, self._last = time.perf_counter(), 0
    self.loss_rise = LossRise()

  def start(self, loop: Loop) -> None:
    self._t0, self._last = time.perf_counter(), loop.step

  def on_metrics(self, loop, step, host, extra, force) -> None:
    if not (step % self.log_every == 0 or force or extra):
      return
    now = time.perf_counter()
    if step > self._last:
      tps = (step - self._last) * self.tokens_per_step / (now - self._t0)
      host["tokens_per_s"] = tps
      if self.peak_flops:
        host["mfu"] = tps * self.flops_per_token / (self.peak_flops * jax.device_count())
    self._t0, self._last = now, step
    host.update(extra)
    host["tokens"] = float(step * self.tokens_per_step)
    if self.logger:
      self.logger.write(step, host)
    loop.console.print(format_metrics(step, loop.total_steps, host))
    rising = self.loss_rise.update(step, host)
    if rising:
      logging.warning(rising)


class StopOnSignal(Hook):
  """SIGTERM/SIGINT stop the loop after the current step (which the checkpoint hook then
  saves); a second Ctrl-C stops at once."""

  every = 1

  def __init__(self):
    self.signum = None
    self._old = {}

  def start(self, loop: Loop) -> None:
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread: no handlers
        pass

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __call__(self, loop: Loop) -> None:
    if self.signum is not None:
      loop.stop(signal.Signals(self.signum).name)

  def end(self, loop: Loop) -> None:
    for s, h in self._old.items():
      signal.signal(s, h)
    self._old = {}


class CheckpointerLike(Protocol):
  def should_save(self, step: int) -> bool: ...
  def save(self, step: int, state, data_state, *, force: bool = False) -> bool: ...
  def reached_preemption(self, step: int) -> bool: ...
  def wait(self) -> None: ...


class CheckpointHook(Hook):
  """Saves at the checkpointer's cadence, at the last step and when the loop stops; stops the
  loop at a preemption notice (TPU, multi-host). A state is saved only after its step's
  metrics are read, so a NaN step is never checkpointed."""

  every = 1  # decides itself, every step

  def __init__(self, checkpointer: CheckpointerLike,
               data_state: Callable[[], Any] | None = None):
    self.checkpointer, self.data_state = checkpointer, data_state

  def __call__(self, loop: Loop) -> None:
    ckpt = self.checkpointer
    if loop.stop_reason is None and ckpt.reached_preemption(loop.step):
      loop.stop("preemption notice")
    if not (ckpt.should_save(loop.step) or loop.last or loop.stop_reason is not None):
      return
    loop.settle()
    ckpt.save(loop.step, loop.state, self.data_state() if self.data_state else None, force=True)
    if loop.stop_reason is not None:
      ckpt.wait()
      loop.stop_note = f"; checkpoint saved at step {loop.step}. Rerun the same command to resume."


