"""Blow-up detection: a meta-loss or held-out loss far above its recent level.

Usage (what `train.train_and_evaluate` does; pure, host-side, no I/O)::

  monitor = SpikeMonitor(factor=100.0, eval_factor=2.0, window=1000)
  for spike in monitor.meta_losses(first_step=101, losses=chunk_losses):
    logging.warning('%s', spike.describe())   # one line per burst
  spike = monitor.heldout_loss(step=1000, loss=mean_loss_before_adapting)

Two rules, each comparing a value with the median of the values before it:

* meta-loss: each meta-step's meta-loss (``query_loss_after`` of that step)
  against the median of the previous `window` steps' meta-losses
  (`SPIKE_WINDOW`); a spike when it exceeds `factor` (`SPIKE_FACTOR`) times
  that median. Nothing is checked until `MIN_HISTORY` steps are known (just
  after the start or a resume). Only the first step of a burst is reported:
  the next report needs the loss back under the threshold first, so one
  blow-up is one line. A NaN or Inf is not a spike, and is left out of the
  history (`maml_plugin.guards` and ``config.on_nonfinite`` handle it).
* held-out loss: at each periodic evaluation, the mean held-out loss before
  adapting (0 inner steps; the loss for classification too, not the
  accuracy) against the median of the previous `EVAL_HISTORY` evaluations'
  (fewer after the start); a spike when it exceeds `eval_factor`
  (`EVAL_SPIKE_FACTOR`) times it.

The median, not the mean, so that the spikes themselves hardly move the
level they are measured against. What to do about a spike is the caller's
choice (``config.on_spike``, `ON_SPIKE`); `rewind` forgets what came after a
restored step, so a run rolled back to a checkpoint keeps its history.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable

import numpy as np

# 100, not 10: a healthy run's single meta-batches reach 54x the median
# meta-loss (the sinusoid default, 15 runs of 70,000 meta-steps; amplitudes
# up to 5 make the tasks' losses heavy-tailed); a meta-batch that blew a run
# up was 1e17x (docs/sinusoid.md).
SPIKE_FACTOR = 100.0
EVAL_SPIKE_FACTOR = 2.0
SPIKE_WINDOW = 1000
# Meta-steps of history before the meta-loss rule checks anything.
MIN_HISTORY = 100
# Evaluations whose median the held-out rule compares with.
EVAL_HISTORY = 3
# What the trainer does on a spike (``config.on_spike``).
ON_SPIKE = ('warn', 'stop', 'rollback')
# Spike lines one run prints under 'warn'; later spikes go to TensorBoard
# only.
MAX_WARNINGS = 10
# Rollbacks for spikes in one run before it stops as 'stop' would.
MAX_ROLLBACKS = 3

META_LOSS = 'meta_loss'
HELDOUT_LOSS = 'heldout_loss'


@dataclasses.dataclass(frozen=True)
class Spike:
  """One blow-up: what spiked, where, and against what.

  Attributes:
    kind: `META_LOSS` or `HELDOUT_LOSS`.
    step: the meta-step (1-based, as the periodic actions count) at which
      the value was computed.
    value: the meta-loss, or the held-out loss before adapting.
    median: the median it was compared with.
    history: how many values that median is over (meta-steps, or
      evaluations).
  """

  kind: str
  step: int
  value: float
  median: float
  history: int

  @property
  def ratio(self) -> float:
    return self.value / self.median if self.median > 0 else math.inf

  @property
  def what(self) -> str:
    """The quantity, as a reader names it."""
    return ('meta-loss' if self.kind == META_LOSS
            else 'held-out loss before adapting')

  def describe(self) -> str:
    """``spike at meta-step 53,217: meta-loss 41.2 is 380x the median of the
    previous 1,000 steps (0.108)``."""
    previous = (f'{self.history:,} steps' if self.kind == META_LOSS
                else f'{self.history} evaluation'
                f'{"s" if self.history != 1 else ""}')
    return (f'spike at meta-step {self.step:,}: {self.what} '
            f'{self.value:.3g} is {self.ratio:.3g}x the median of the '
            f'previous {previous} ({self.median:.3g})')


class SpikeMonitor:
  """The two spike rules of the module docstring, fed one value at a time.

  Args:
    factor: a meta-loss above `factor` times its median is a spike.
    eval_factor: a held-out loss above `eval_factor` times its median is one.
    window: meta-steps whose median the meta-loss rule compares with.
    min_history: meta-steps known before the meta-loss rule checks.
  """

  def __init__(self, *, factor: float = SPIKE_FACTOR,
               eval_factor: float = EVAL_SPIKE_FACTOR,
               window: int = SPIKE_WINDOW, min_history: int = MIN_HISTORY):
    self.factor = factor
    self.eval_factor = eval_factor
    self.window = window
    self.min_history = min(min_history, window)
    self._losses = collections.deque(maxlen=window)  # (step, meta-loss)
    self._evals = collections.deque(maxlen=EVAL_HISTORY)  # (step, loss)
    self._in_burst = False
    self._good_evals = []  # Steps of the evaluations that were no spike.

  @property
  def last_good_eval_step(self) -> int | None:
    """The latest evaluation that was not a spike (a rollback's target)."""
    return self._good_evals[-1] if self._good_evals else None

  def meta_losses(self, first_step: int,
                  losses: Iterable[float]) -> list[Spike]:
    """Feeds the meta-losses of steps ``first_step, first_step + 1, ...``;
    returns the spikes among them (the first step of each burst)."""
    values = np.asarray(losses, np.float64).ravel()
    steps = np.arange(first_step, first_step + values.size)
    finite = np.isfinite(values)
    values, steps = values[finite], steps[finite]
    known = np.fromiter((v for _, v in self._losses), np.float64,
                        count=len(self._losses))
    every = np.concatenate([known, values])
    medians = self._medians(every, len(known), values.size)
    spikes = []
    for i, (step, loss) in enumerate(zip(steps.tolist(), values.tolist())):
      if medians[i] is not None:
        median, history = medians[i]
        above = loss > self.factor * median
        if above and not self._in_burst:
          spikes.append(Spike(META_LOSS, step, loss, median, history))
        self._in_burst = above
      self._losses.append((step, loss))
    return spikes

  def _medians(self, every, num_known: int, num_new: int) -> list:
    """For each new value ``every[num_known + i]``: ``(median, count)`` of
    the up to `window` values before it, or None with fewer than
    `min_history`. One vectorized median over the chunk once the window is
    full (the trainer's case after its first `window` steps)."""
    if num_new == 0:
      return []
    if num_known >= self.window:
      windows = np.lib.stride_tricks.sliding_window_view(
          every[num_known - self.window:num_known + num_new - 1], self.window)
      return [(float(m), self.window) for m in np.median(windows, axis=1)]
    out = []
    for i in range(num_new):
      end = num_known + i
      before = every[max(0, end - self.window):end]
      out.append((float(np.median(before)), before.size)
                 if before.size >= self.min_history else None)
    return out

  def heldout_loss(self, step: int, loss: float) -> Spike | None:
    """Feeds one evaluation's held-out loss before adapting; the spike, or
    None."""
    loss = float(loss)
    if not math.isfinite(loss):
      return None
    spike = None
    if self._evals:
      median = float(np.median([v for _, v in self._evals]))
      if loss > self.eval_factor * median:
        spike = Spike(HELDOUT_LOSS, step, loss, median, len(self._evals))
    self._evals.append((step, loss))
    if spike is None:
      self._good_evals.append(step)
    return spike

  def rewind(self, step: int) -> None:
    """Forgets the values of the steps after `step` (a rollback to it)."""
    for history in (self._losses, self._evals):
      kept = [(s, v) for s, v in history if s <= step]
      history.clear()
      history.extend(kept)
    self._in_burst = False
    self._good_evals = [s for s in self._good_evals if s <= step]


class SpikeError(ArithmeticError):
  """Training stopped on a spike (``config.on_spike='stop'``, or 'rollback'
  with nothing to roll back to or after `MAX_ROLLBACKS` rollbacks). One
  line."""
