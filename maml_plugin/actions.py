"""CLU periodic actions of maml_plugin, and the evaluation report they write.

Usage (in any loop that calls its hooks after every step)::

  evaluation = FewShotEvaluation(evaluator=evaluator, writer=writer,
                                 state_fn=lambda: state, every_steps=1000)
  checkpoint = Checkpoint(manager=manager, state_fn=lambda: state,
                          rng=rng, every_steps=1000)
  for step in range(1, num_steps + 1):
    state, metrics = train_step(state, batch, rng)
    for hook in (evaluation, checkpoint):
      hook(step)

To write a new action, subclass `clu.periodic_actions.PeriodicAction`,
implement `_apply(step, t)`, and write through a CLU `MetricWriter`.
`state_fn` returns the latest train state, so an action never holds a stale
one.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import numpy as np

from maml_plugin import checkpointing
from maml_plugin import evaluation
from maml_plugin import workdir as workdir_lib


def _summarize_and_log(metric: str, curves):
  """`evaluation.summarize`, logging one line if any task was non-finite."""
  summary = evaluation.summarize(curves, metric)
  message = evaluation.nonfinite_message(metric, summary,
                                         int(np.shape(curves)[0]))
  if message is not None:
    logging.warning('%s', message)
  return summary


def evaluation_scalars(metric: str, curves) -> dict[str, float]:
  """``{'eval/mse_step0': mean, 'eval/mse_step0_ci95': ..., '..._median',
  '..._nonfinite', '..._diverged', ...}`` for a writer (see
  `evaluation.StepSummary`)."""
  out = {}
  for k, s in _summarize_and_log(metric, curves).items():
    out[f'eval/{metric}_step{k}'] = s.mean
    for name in ('ci95', 'median', 'nonfinite', 'diverged'):
      out[f'eval/{metric}_step{k}_{name}'] = getattr(s, name)
  return out


class FewShotEvaluation(periodic_actions.PeriodicAction):
  """Adapts on the held-out tasks for 0..N inner steps, writes mean and ci95."""

  def __init__(self, *, evaluator: evaluation.FewShotEvaluator,
               writer: metric_writers.MetricWriter,
               state_fn: Callable[[], Any], **kwargs):
    super().__init__(**kwargs)
    self._evaluator = evaluator
    self._writer = writer
    self._state_fn = state_fn
    self.last_curves = None  # [tasks, steps + 1] of the latest evaluation,
    self.last_step = None    # the train step it evaluated,
    self.last_loss_before = None  # and its mean loss before adapting.

  @property
  def metric(self) -> str:
    return self._evaluator.metric

  def _apply(self, step: int, t: float):
    del t
    state = self._state_fn()
    model_state = getattr(state, 'model_state', None)
    self.last_curves = self._evaluator(state.params, model_state)
    self.last_loss_before = self._evaluator.loss_before(
        state.params, model_state, curves=self.last_curves)
    self.last_step = step
    self._writer.write_scalars(
        step, evaluation_scalars(self._evaluator.metric, self.last_curves))
    self._writer.flush()


class HeldOutSpikeCheck(periodic_actions.PeriodicAction):
  """Feeds each evaluation's loss before adapting to a
  `spikes.SpikeMonitor` and calls ``on_spike(spike)`` on a spike.

  Place it after `evaluation` and before `Checkpoint` in the hooks, with the
  evaluation's `every_steps`: ``on_spike`` may raise, so that the step of a
  spike is never saved.
  """

  def __init__(self, *, evaluation: FewShotEvaluation, monitor,
               on_spike: Callable[[Any], None], **kwargs):
    super().__init__(**kwargs)
    self._evaluation = evaluation
    self._monitor = monitor
    self._on_spike = on_spike

  def _apply(self, step: int, t: float):
    del t
    if self._evaluation.last_step != step:  # No evaluation at this step.
      return
    spike = self._monitor.heldout_loss(step,
                                       self._evaluation.last_loss_before)
    if spike is not None:
      self._on_spike(spike)


class Checkpoint(periodic_actions.PeriodicAction):
  """Saves the train state (and the loop's base key) with orbax.

  `rng`: the base key, or a function returning the current one (a loop
  that changes it, e.g. after a rollback).
  """

  def __init__(self, *, manager, state_fn: Callable[[], Any], rng, **kwargs):
    super().__init__(**kwargs)
    self._manager = manager
    self._state_fn = state_fn
    self._rng_fn = rng if callable(rng) else lambda: rng

  def _apply(self, step: int, t: float):
    del step, t
    checkpointing.save(self._manager, self._state_fn(), self._rng_fn())


def evaluation_report(metric: str, curves, train_step: int) -> dict:
  """The evaluation.json document (see README)."""
  summary = _summarize_and_log(metric, curves)
  report = {
      'metric': metric,
      'num_tasks': int(curves.shape[0]),
      'train_step': int(train_step),
      'inner_steps': {str(k): {name: _json_number(v)
                               for name, v in s._asdict().items()}
                      for k, s in summary.items()},
  }
  dominated = evaluation.dominated_messages(summary)
  if dominated:
    report['dominated_by_few_tasks'] = dominated
  return report


def _json_number(value):
  """JSON has no NaN: a non-finite value (no finite task) is written null."""
  return value if math.isfinite(value) else None


def _cell(value, width: int, spec: str) -> str:
  return f'{"nan" if value is None else format(value, spec):>{width}}'


def format_table(report: dict) -> str:
  metric = report['metric']
  lines = [f'{report["num_tasks"]} held-out tasks, checkpoint step '
           f'{report["train_step"]}',
           f'{"inner steps":>11}  {metric + " mean":>12}  {"ci95":>8}  '
           f'{"median":>8}  {"nonfinite":>9}  {"diverged":>8}']
  for k, v in report['inner_steps'].items():
    lines.append(f'{k:>11}  {_cell(v["mean"], 12, ".4f")}  '
                 f'{_cell(v["ci95"], 8, ".4f")}  '
                 f'{_cell(v.get("median"), 8, ".4f")}  '
                 f'{v.get("nonfinite", 0):>9}  {v.get("diverged", 0):>8}')
  lines += report.get('dominated_by_few_tasks', [])
  lines += [f'rolled back at meta-step {r["spike_step"]:,} ({r["what"]} '
            f'spiked) to step {r["restored_step"]:,}'
            for r in report.get('rollbacks', [])]
  return '\n'.join(lines)


def write_evaluation_report(workdir: str, report: dict) -> str:
  path = os.path.join(workdir, 'evaluation.json')
  # allow_nan=False: a bare NaN is not JSON (the report writes null).
  workdir_lib.write_text(path, json.dumps(report, indent=2, allow_nan=False)
                         + '\n')
  return path
