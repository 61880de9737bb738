"""Few-shot evaluation math: query loss after 0..N inner steps on held-out tasks.

Pure functions (no I/O): the `FewShotEvaluation` periodic action and the
``maml_plugin.evaluate`` command call them and do the writing.

Usage::

  curves = adaptation_curves(loss_fn, params, eval_tasks, inner_lr=0.01,
                             num_inner_steps=10)  # [tasks, 11]
  summary = summarize(curves)   # {0: StepSummary(mean, ci95, median,
                                #      nonfinite, diverged), 1: ...}

Every algorithm is evaluated with its own inner loop: pass
``inner_loop=algorithm.inner_loop`` (a `core.InnerLoop`, e.g. Meta-SGD's
learned rates or ANIL's head-only step) and the train state's params;
without it, the inner loop is plain SGD at `inner_lr` (MAML).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maml_plugin import core

Z_95 = 1.96  # two-sided 95% normal quantile


def _inner_loop(loss_fn, inner_lr, inner_loop, model_state=None):
  if inner_loop is not None:
    return inner_loop
  if inner_lr is None:
    raise ValueError('inner_lr=None and inner_loop=None: give one of them')
  loop = core.sgd_inner_loop(core.bind_state(loss_fn, model_state), inner_lr)
  if core.is_stateful(loss_fn):
    loop = loop._replace(loss_at=lambda fn, k: core.bind_state(fn,
                                                               model_state))
  return loop


def _measure(loop: core.InnerLoop, metric_fn, k):
  """The parameter-only metric evaluation reads after `k` inner steps."""
  if loop.loss_at is not None:
    return loop.loss_at(metric_fn, k)
  if core.is_stateful(metric_fn):
    raise ValueError('a core.StatefulLoss metric needs an inner loop that '
                     'binds the model state (MetaAlgorithm.eval_inner_loop)')
  return metric_fn


def adaptation_curve(metric_fn: core.LossFn, loss_fn: core.LossFn, params,
                     task, *, inner_lr=None, num_inner_steps: int,
                     inner_loop: core.InnerLoop | None = None) -> jax.Array:
  """`metric_fn` on ONE task's query set after 0, 1, ..., num_inner_steps steps.

  The inner loop (`inner_loop`, or SGD at `inner_lr` on `loss_fn`) adapts
  on the support set exactly as in training; `metric_fn(params, batch)`
  may differ from the loss (e.g. accuracy). Where the query loss is NaN or
  Inf the value is NaN, so a diverged task is counted as non-finite
  (`summarize`) even by a metric that would hide it (argmax of NaN logits
  reads as class 0, i.e. chance accuracy).
  """
  loop = _inner_loop(loss_fn, inner_lr, inner_loop)

  def measure(p, k):
    value = _measure(loop, metric_fn, k)(p, task['query'])
    if metric_fn is loss_fn:
      return value
    loss = _measure(loop, loss_fn, k)(p, task['query'])
    return jnp.where(jnp.isfinite(loss), value, jnp.nan)

  def body(carry, k):
    carry = loop.step(params, carry, task['support'], k)
    return carry, measure(loop.params(carry), k + 1)

  carry = loop.init(params)
  before = measure(loop.params(carry), 0)
  _, after = jax.lax.scan(body, carry,
                          jnp.arange(num_inner_steps, dtype=jnp.int32))
  return jnp.concatenate([before[None], after])


def _renamed(num_inner_steps, max_steps) -> int:
  """`num_inner_steps`, or the deprecated `max_steps` it was called."""
  if max_steps is not None:
    warnings.warn('max_steps is now num_inner_steps', DeprecationWarning,
                  stacklevel=3)
    if num_inner_steps is None:
      num_inner_steps = max_steps
  if num_inner_steps is None:
    raise TypeError('num_inner_steps is required (the inner steps to '
                    'evaluate after)')
  return num_inner_steps


def adaptation_curves(loss_fn: core.LossFn, params, tasks, *, inner_lr=None,
                      num_inner_steps: int | None = None,
                      metric_fn: core.LossFn | None = None,
                      inner_loop: core.InnerLoop | None = None,
                      task_batch_size: int | None = None,
                      max_steps: int | None = None) -> jax.Array:
  """`adaptation_curve` for every task of `tasks`:
  ``[tasks, num_inner_steps + 1]``. (`max_steps`: the former name of
  `num_inner_steps`, deprecated.)

  `task_batch_size` bounds memory: tasks are vmapped that many at a time
  (`jax.lax.map`); None vmaps all of them at once. The values are the same.
  """
  num_inner_steps = _renamed(num_inner_steps, max_steps)
  metric_fn = loss_fn if metric_fn is None else metric_fn

  def curve(t):
    return adaptation_curve(metric_fn, loss_fn, params, t, inner_lr=inner_lr,
                            num_inner_steps=num_inner_steps,
                            inner_loop=inner_loop)

  if task_batch_size is None:
    return jax.vmap(curve)(tasks)
  return jax.lax.map(curve, tasks, batch_size=task_batch_size)


def mean_and_ci95(values) -> tuple[float, float]:
  """Mean and half-width of the normal 95% interval, 1.96 * std / sqrt(n).

  `std` is the sample standard deviation (ddof=1).
  """
  values = np.asarray(values, np.float64)
  n = values.shape[0]
  if n < 2:
    raise ValueError(f'num_tasks={n}: need at least 2 tasks for a ci95')
  return float(values.mean()), float(
      Z_95 * values.std(ddof=1) / math.sqrt(n))


# Metrics where higher is better: "diverged" means the value fell.
HIGHER_IS_BETTER = ('accuracy',)


class StepSummary(NamedTuple):
  """The held-out tasks after one inner-step count.

  Attributes:
    mean: mean over the finite tasks (NaN if none is finite).
    ci95: `mean_and_ci95`'s half-width over the finite tasks (NaN if fewer
      than 2 are finite).
    median: median over the finite tasks (NaN if none is finite).
    nonfinite: tasks whose value is NaN or Inf (left out of the above).
    diverged: finite tasks that adapting made worse than before adapting
      (loss grew; for metrics in `HIGHER_IS_BETTER`, the value fell); 0 at
      step 0.
  """

  mean: float
  ci95: float
  median: float
  nonfinite: int
  diverged: int


def summarize(curves, metric: str = 'mse') -> dict[int, StepSummary]:
  """``{inner_steps: StepSummary}`` over the task axis of `curves`.

  A NaN is counted, never averaged: mean, ci95 and median are over the
  finite tasks, and `StepSummary.nonfinite` says how many were left out.
  """
  curves = np.asarray(curves, np.float64)
  if curves.shape[0] < 2:
    raise ValueError(f'num_tasks={curves.shape[0]}: need at least 2 tasks '
                     'for a ci95')
  finite = np.isfinite(curves)
  sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
  out = {}
  for k in range(curves.shape[1]):
    values = curves[finite[:, k], k]
    if values.size >= 2:
      mean, ci95 = mean_and_ci95(values)
    else:  # No spread from fewer than 2 tasks; no mean from none.
      mean, ci95 = (float(values[0]) if values.size else math.nan), math.nan
    both = finite[:, k] & finite[:, 0]
    worse = sign * (curves[both, k] - curves[both, 0]) > 0
    out[k] = StepSummary(
        mean=mean, ci95=ci95,
        median=float(np.median(values)) if values.size else math.nan,
        nonfinite=int((~finite[:, k]).sum()), diverged=int(worse.sum()))
  return out


# A mean more than this many times its median is dominated by a few tasks.
DOMINATED_RATIO = 10.0


def dominated_messages(summary: dict[int, StepSummary]) -> list[str]:
  """One line per inner-step count whose mean is more than
  `DOMINATED_RATIO` times its median: a few tasks dominate that mean (the
  median says what a typical task reaches)."""
  out = []
  for k, s in summary.items():
    if s.median > 0 and s.mean > DOMINATED_RATIO * s.median:
      out.append(f'after {k} inner step{"" if k == 1 else "s"} the mean '
                 f'({s.mean:.3g}) is {s.mean / s.median:.3g}x the median '
                 f'({s.median:.3g}): a few tasks dominate it')
  return out


def nonfinite_message(metric: str, summary: dict[int, StepSummary],
                      num_tasks: int) -> str | None:
  """One line naming the inner-step counts with non-finite tasks, or None.

  Runs of steps with the same count are joined: "1 of 600 held-out tasks
  after 3 inner steps, 2 of 600 after 4 to 10".
  """
  runs = []  # [first_step, last_step, count]
  for k, s in summary.items():
    if not s.nonfinite:
      continue
    if runs and runs[-1][1] == k - 1 and runs[-1][2] == s.nonfinite:
      runs[-1][1] = k
    else:
      runs.append([k, k, s.nonfinite])
  if not runs:
    return None
  parts = [f'{n} of {num_tasks}{" held-out tasks" if i == 0 else ""} after '
           f'{a if a == b else f"{a} to {b}"}'
           f'{" inner steps" if i == 0 else ""}'
           for i, (a, b, n) in enumerate(runs)]
  return (f'few-shot evaluation: {metric} is NaN or Inf for '
          f'{", ".join(parts)}; mean, ci95 and median are over the finite '
          'tasks')


def adapted_params_at(loss_fn: core.LossFn, params, support, *,
                      inner_lr=None, steps: tuple[int, ...],
                      inner_loop: core.InnerLoop | None = None):
  """Model params of ONE task after each of `steps` inner steps (for plots)."""
  loop = _inner_loop(loss_fn, inner_lr, inner_loop)
  out, carry = [], loop.init(params)
  wanted = sorted(steps)
  if wanted and wanted[0] == 0:
    out.append(loop.params(carry))
  for k in range(wanted[-1] if wanted else 0):
    carry = loop.step(params, carry, support, jnp.int32(k))
    if k + 1 in wanted:
      out.append(loop.params(carry))
  return out


class FewShotEvaluator:
  """Jitted few-shot evaluation on a fixed set of held-out tasks.

  ``FewShotEvaluator(loss_fn, tasks, inner_lr=..., num_inner_steps=10)(params)``
  returns the ``[num_tasks, num_inner_steps + 1]`` curves as a NumPy array. It
  reads params and never changes them (nor any other stored state).

  A model with state (`core.StatefulLoss`): pass its evaluation loss and
  metric (dropout off; batch norm from each batch's statistics or from the
  stored averages, `nnx_bridge.NNXModel.eval_loss`), the algorithm's
  ``inner_loop_for=algorithm.eval_inner_loop``, and call
  ``evaluator(params, model_state)``: the state is read, never changed.
  """

  def __init__(self, loss_fn: core.LossFn, tasks, *, inner_lr=None,
               num_inner_steps: int | None = None, metric: str = 'mse',
               metric_fn: core.LossFn | None = None,
               inner_loop: core.InnerLoop | None = None,
               inner_loop_for=None,
               task_batch_size: int | None = None,
               max_steps: int | None = None):
    num_inner_steps = _renamed(num_inner_steps, max_steps)
    self.tasks = tasks
    self.metric = metric
    self.num_inner_steps = num_inner_steps
    self.num_tasks = int(jax.tree.leaves(tasks['query'])[0].shape[0])
    self.loss_fn = loss_fn
    self.metric_fn = loss_fn if metric_fn is None else metric_fn

    def loop_for(model_state):
      if inner_loop_for is not None:
        return inner_loop_for(loss_fn, model_state)
      return _inner_loop(loss_fn, inner_lr, inner_loop, model_state)

    self.loop_for = loop_for
    self._curves = jax.jit(lambda params, model_state, tasks:
                           adaptation_curves(
                               loss_fn, params, tasks,
                               num_inner_steps=num_inner_steps,
                               metric_fn=self.metric_fn,
                               inner_loop=loop_for(model_state),
                               task_batch_size=task_batch_size))
    self.inner_loop = loop_for(None) if not core.is_stateful(loss_fn) else None
    def losses_before(params, model_state, tasks):
      loop = loop_for(model_state)
      model_params = loop.params(loop.init(params))  # Not the rates.
      return jax.vmap(lambda t: _measure(loop, loss_fn, 0)(
          model_params, t['query']))(tasks)

    self._losses_before = jax.jit(losses_before)
    self._compiled = None

  def compile(self, params, model_state=None):
    """Compiles the evaluation once, for params (and model state) like
    these: arrays or `jax.ShapeDtypeStruct`s with the shardings later calls
    pass. Later calls run this executable (jit would compile again); its
    ``memory_analysis()`` says what one evaluation needs before any runs.

    Returns:
      The `jax.stages.Compiled` executable.
    """
    self._compiled = self._curves.lower(params, model_state,
                                        self.tasks).compile()
    return self._compiled

  def __call__(self, params, model_state=None) -> np.ndarray:
    curves = self._compiled or self._curves
    return np.asarray(jax.device_get(curves(params, model_state,
                                            self.tasks)))

  def loss_before(self, params, model_state=None, curves=None) -> float:
    """The mean query loss before adapting over the finite held-out tasks
    (NaN if none is): the loss for a metric that is not (accuracy), so a
    blow-up shows (`maml_plugin.spikes`). `curves` of the same params, when
    the metric is the loss, give it without computing anything."""
    if curves is not None and self.metric_fn is self.loss_fn:
      values = np.asarray(curves)[:, 0]
    else:
      values = np.asarray(jax.device_get(self._losses_before(
          params, model_state, self.tasks)))
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


# Names that moved: a one-line error naming the new one.
_MOVED = {'sinusoid_fits': 'maml_plugin.tasks.sinusoid.sinusoid_fits'}


def __getattr__(name):
  if name in _MOVED:
    raise AttributeError(f'maml_plugin.evaluation.{name} moved to '
                         f'{_MOVED[name]}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
