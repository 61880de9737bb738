"""Non-finite guard of the fused train loop: NaN/Inf meta-loss or gradient.

Usage (inside a `lax.scan` over meta-steps; see `train.make_train_chunk`)::

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

import flax
import jax
import jax.numpy as jnp


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


def guard_update(state, new_state, metrics, report: NonFiniteReport, *,
                 skip: bool):
  """Returns ``(state, ok, report)``; see the module docstring."""
  loss = metrics.query_loss_after.total / metrics.query_loss_after.count
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
