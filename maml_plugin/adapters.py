"""Our pure train step inside other people's loops.

A jaxline-style experiment step (``step(*, global_step, rng, writer) ->
dict``) over any registered train step::

  experiment = JaxlineStep(
      train_step=maml_plugin.make_train_step('maml', loss_fn=loss_fn, tx=tx,
                                             inner_lr=0.01),
      sample_batch=lambda rng: tasks.train_batch(rng, 25),
      state=maml_plugin.MetaTrainState.create(params, tx),
      evaluator=evaluator)                      # optional
  for global_step in range(num_steps):
    scalars = experiment.step(global_step=global_step,
                              rng=jax.random.fold_in(key, global_step),
                              writer=writer)
  experiment.evaluate(global_step=num_steps, rng=key, writer=writer)

The adapter owns the train state between calls (jaxline's experiment object
does the same) and draws the meta-batch and the step key from `rng` exactly
as `maml_plugin.train.make_train_chunk` does, so a loop that passes
``fold_in(key, step)`` meets the same tasks as our trainer.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from maml_plugin import actions
from maml_plugin import train_steps


def _as_key(rng) -> jax.Array:
  """A typed key from a typed key or raw ``uint32[2]`` key data (jaxline)."""
  if jax.dtypes.issubdtype(getattr(rng, 'dtype', None), jax.dtypes.prng_key):
    return rng
  return jax.random.wrap_key_data(np.asarray(rng, np.uint32))


def _as_int(global_step) -> int:
  """jaxline hands a per-device array; any other loop a plain int."""
  return int(np.asarray(global_step).reshape(-1)[0])


class JaxlineStep:
  """``step(*, global_step, rng, writer) -> dict`` over a pure train step."""

  def __init__(self, *, train_step: train_steps.TrainStep,
               sample_batch: Callable[[jax.Array], Any],
               state: train_steps.MetaTrainState, evaluator=None,
               jit: bool = True):
    def one_step(state, rng):
      batch_rng, step_rng = jax.random.split(rng)
      return train_step(state, sample_batch(batch_rng), step_rng)

    self._step = jax.jit(one_step, donate_argnums=0) if jit else one_step
    self._evaluator = evaluator
    # A copy: the jitted step donates its state, and the caller's arrays
    # (often the model's initial params) must stay usable.
    self.state = jax.tree.map(jnp.copy, state)

  def step(self, *, global_step, rng, writer=None) -> dict[str, float]:
    """One meta-step; returns (and writes, if `writer`) its scalars."""
    self.state, metrics = self._step(self.state, _as_key(rng))
    scalars = {f'train/{k}': float(v) for k, v in metrics.compute().items()}
    if writer is not None:
      writer.write_scalars(_as_int(global_step), scalars)
    return scalars

  def evaluate(self, *, global_step, rng=None, writer=None
               ) -> dict[str, float]:
    """Few-shot evaluation of the current state (mean and ci95 per step)."""
    del rng  # The held-out tasks are fixed by the evaluator's seed.
    if self._evaluator is None:
      raise ValueError('evaluator=None: JaxlineStep.evaluate needs a '
                       'FewShotEvaluator')
    curves = self._evaluator(self.state.params, self.state.model_state)
    scalars = actions.evaluation_scalars(self._evaluator.metric, curves)
    if writer is not None:
      writer.write_scalars(_as_int(global_step), scalars)
    return scalars
