"""Registered MAML train steps that meet bad targets on chosen steps: NaN
query targets (the non-finite guard) or targets 1000x their size (the spike
rule, `maml_plugin.spikes`)."""

import dataclasses

import jax
import jax.numpy as jnp

from maml_plugin import algorithms
from maml_plugin.algorithms import maml


def _register_bad_batch_step(name: str, bad_batch) -> None:
  """Registers `name`: MAML on ``bad_batch(state, batch, rng)``."""

  @algorithms.TRAIN_STEPS.register(name, fields=maml.MAMLHParams)
  def make_train_step(hparams, *, loss_fn, tx):
    maml_step = algorithms.make_algorithm(
        'maml', loss_fn=loss_fn, tx=tx, **dataclasses.asdict(hparams))

    def train_step(state, batch, rng):
      return maml_step.train_step(state, bad_batch(state, batch, rng), rng)

    return dataclasses.replace(maml_step, train_step=train_step)


def register_nan_query_step(name: str, bad_steps: range) -> None:
  """Registers `name`: MAML whose query targets are NaN on the meta-steps
  (0-based) in `bad_steps`, for the trainer's non-finite guard."""

  def bad_batch(state, batch, rng):
    del rng
    bad = (state.step >= bad_steps.start) & (state.step < bad_steps.stop)
    query = dict(batch['query'],
                 y=jnp.where(bad, jnp.nan, batch['query']['y']))
    return dict(batch, query=query)

  _register_bad_batch_step(name, bad_batch)


def register_spiking_step(name: str, from_step: int, *,
                          only_seed: int | None = None,
                          factor: float = 1000.0) -> None:
  """Registers `name`: MAML whose support and query targets are `factor`
  times their size from the 0-based state step `from_step` on, i.e. from
  meta-step ``from_step + 1`` (as the periodic actions count) on.

  With `only_seed`, only while the step's key is the one the trainer draws
  from ``jax.random.key(only_seed)``: a run that derived a fresh base key
  (a rollback past the spike) trains on healthy tasks again.
  """

  def bad_batch(state, batch, rng):
    bad = state.step >= from_step
    if only_seed is not None:
      _, seed_rng = jax.random.split(
          jax.random.fold_in(jax.random.key(only_seed), state.step))
      bad &= jnp.all(jax.random.key_data(seed_rng)
                     == jax.random.key_data(rng))
    scale = jnp.where(bad, factor, 1.0)
    return {part: dict(batch[part], y=batch[part]['y'] * scale)
            for part in ('support', 'query')}

  _register_bad_batch_step(name, bad_batch)
