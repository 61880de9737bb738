"""Non-finite guards: NaN/Inf meta-loss or meta-gradient.

A registered train step in your own loop (opt-in; see `guard_train_step`)::

  step = jax.jit(guard_train_step(train_step, on_nonfinite='skip'))
  state, metrics = step(state, batch, rng)   # metrics.skipped_updates

  step = guard_train_step(train_step, on_nonfinite='stop')  # jits it itself
  state, metrics = step(state, batch, rng)   # raises NonFiniteError

Inside our trainer's `lax.scan` over meta-steps (`train.make_train_chunk`)::

  report = NonFiniteReport.empty()
  new_state, metrics = train_step(state, batch, rng)
  new_state, keep, report = guard_update(state, new_state, metrics, report,
                                         skip=True)

Checking costs two `isfinite` on scalars the step already computes (the
meta-loss and the meta-gradient's global norm; a NaN or Inf anywhere in the
gradient makes its norm non-finite). With ``skip=True`` a bad update is
dropped (params and optimizer state keep their values, the step counter still
advances so the next step draws new tasks); otherwise the loop stops at the
end of the chunk with `NonFiniteError` and saves nothing.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax
import jax
import jax.numpy as jnp

from maml_plugin import metrics as metrics_lib


class NonFiniteError(FloatingPointError):
  """A meta-step produced a NaN or Inf meta-loss or meta-gradient."""


@flax.struct.dataclass
class NonFiniteReport:
  """Bad meta-steps of one chunk: counts and the first one's values."""

  bad_loss_steps: jax.Array      # int32, steps with a non-finite meta-loss
  bad_grad_steps: jax.Array      # int32, steps with a non-finite gradient
  first_bad_step: jax.Array      # int32, the meta-step number, -1 if none
  first_loss: jax.Array          # float32, meta-loss at that step
  first_grad_norm: jax.Array     # float32, meta-gradient norm at that step

  @classmethod
  def empty(cls) -> 'NonFiniteReport':
    return cls(bad_loss_steps=jnp.zeros((), jnp.int32),
               bad_grad_steps=jnp.zeros((), jnp.int32),
               first_bad_step=-jnp.ones((), jnp.int32),
               first_loss=jnp.zeros((), jnp.float32),
               first_grad_norm=jnp.zeros((), jnp.float32))

  @property
  def skipped(self):
    """Number of steps with any bad quantity (host side, after device_get)."""
    return max(int(self.bad_loss_steps), int(self.bad_grad_steps))


def meta_loss(metrics) -> jax.Array:
  """One step's meta-loss: its metrics' ``query_loss_after``."""
  return metrics.query_loss_after.total / metrics.query_loss_after.count


def guard_update(state, new_state, metrics, report: NonFiniteReport, *,
                 skip: bool):
  """Returns ``(state, ok, report)``; see the module docstring."""
  loss = meta_loss(metrics)
  grad_norm = metrics.meta_grad_norm.total / metrics.meta_grad_norm.count
  loss_ok = jnp.isfinite(loss)
  grad_ok = jnp.isfinite(grad_norm)
  ok = loss_ok & grad_ok
  first = (report.first_bad_step < 0) & ~ok
  report = NonFiniteReport(
      bad_loss_steps=report.bad_loss_steps + (~loss_ok).astype(jnp.int32),
      bad_grad_steps=report.bad_grad_steps + (~grad_ok).astype(jnp.int32),
      first_bad_step=jnp.where(first, new_state.step.astype(jnp.int32),
                               report.first_bad_step),
      first_loss=jnp.where(first, loss.astype(jnp.float32),
                           report.first_loss),
      first_grad_norm=jnp.where(first, grad_norm.astype(jnp.float32),
                                report.first_grad_norm))
  if skip:
    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
    new_state = kept.replace(step=new_state.step)
  return new_state, ok, report


def describe(report: NonFiniteReport) -> str:
  """One line naming the first bad step and the quantities that went bad."""
  loss, grad_norm = float(report.first_loss), float(report.first_grad_norm)
  bad = []
  if not jnp.isfinite(loss):
    bad.append(f'meta-loss (query_loss_after) is {loss}')
  if not jnp.isfinite(grad_norm):
    bad.append(f'meta-gradient (meta_grad_norm) is {grad_norm}')
  return f'meta-step {int(report.first_bad_step)}: ' + ' and '.join(bad)


ON_NONFINITE = ('stop', 'skip')


def guard_train_step(train_step: Callable, on_nonfinite: str = 'skip', *,
                     jit: bool = True) -> Callable:
  """A registered train step guarded against a non-finite update.

  The result keeps the signature ``(state, batch, rng) -> (state, metrics)``.
  A step is bad when its meta-loss (``query_loss_after``) or its
  meta-gradient's norm (``meta_grad_norm``) is NaN or Inf.

  * ``'skip'``: a pure, jittable step (jit it yourself, like the step it
    wraps). A bad update is dropped: params, optimizer state (and any other
    state) keep their values, the step counter still advances. The metrics
    gain ``skipped_updates`` (a `metrics.Count`: 1 on a skipped step), and a
    skipped step adds nothing to the averages, so metrics merged across steps
    stay finite.
  * ``'stop'``: raises `NonFiniteError` naming the meta-step and the bad
    quantity. An exception cannot leave a jitted function (an error raised in
    a `jax.debug.callback` comes back as a `JaxRuntimeError`, its type
    lost), so this is a host-side wrapper: it jits the guarded step itself
    (``jit=False`` runs it as given), reads one flag per step and raises
    before returning the bad state; the caller's ``state`` is still the last
    good one (nothing is donated). Reading the flag waits for the step, so
    steps are not queued ahead; it cannot itself be called under `jax.jit`
    (TypeError). For a fused loop, use our trainer's
    ``config.on_nonfinite`` (`guard_update` inside its scan).

  Raises:
    ValueError: if `on_nonfinite` is not one of `ON_NONFINITE`.
  """
  if on_nonfinite == 'skip':
    return _skip_nonfinite(train_step)
  if on_nonfinite == 'stop':
    return _stop_on_nonfinite(train_step, jit=jit)
  raise ValueError(f'on_nonfinite={on_nonfinite!r}: must be one of '
                   f'{", ".join(repr(m) for m in ON_NONFINITE)}')


@functools.lru_cache(maxsize=None)
def _with_skipped_updates(metrics_cls):
  """`metrics_cls` with a ``skipped_updates`` `Count` (one class per type)."""
  fields = {name: type(metric) for name, metric in
            vars(metrics_cls.empty()).items()}
  fields['skipped_updates'] = metrics_lib.Count
  return flax.struct.dataclass(type(f'Guarded{metrics_cls.__name__}',
                                    (metrics_cls,),
                                    {'__annotations__': fields}))


def _skip_nonfinite(train_step):
  @functools.wraps(train_step)
  def step(state, batch, rng):
    new_state, metrics = train_step(state, batch, rng)
    new_state, ok, _ = guard_update(state, new_state, metrics,
                                    NonFiniteReport.empty(), skip=True)
    # A skipped step contributes the empty metric: merging it is a no-op.
    kept = jax.tree.map(lambda m, e: jnp.where(ok, m, e), metrics,
                        type(metrics).empty())
    cls = _with_skipped_updates(type(metrics))
    return new_state, cls(
        **vars(kept),
        skipped_updates=metrics_lib.Count(total=(~ok).astype(jnp.int32)))

  return step


def _stop_on_nonfinite(train_step, *, jit: bool):
  def guarded(state, batch, rng):
    new_state, metrics = train_step(state, batch, rng)
    _, _, report = guard_update(state, new_state, metrics,
                                NonFiniteReport.empty(), skip=False)
    return new_state, metrics, report

  run = jax.jit(guarded) if jit else guarded

  @functools.wraps(train_step)
  def step(state, batch, rng):
    new_state, metrics, report = run(state, batch, rng)
    if isinstance(report.first_bad_step, jax.core.Tracer):
      raise TypeError(
          "guard_train_step(..., on_nonfinite='stop') raises on the host "
          'after each step, so it cannot run under jax.jit: call it as is '
          "(it jits the step itself), or jit on_nonfinite='skip'")
    report = jax.device_get(report)
    if int(report.first_bad_step) >= 0:
      raise NonFiniteError(f'{describe(report)}; stopped before applying '
                           'it, the state passed in is the last good one')
    return new_state, metrics

  return step
