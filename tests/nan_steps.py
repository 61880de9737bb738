"""A registered MAML train step that meets NaN query targets on chosen steps."""

import dataclasses

import jax.numpy as jnp

from maml_plugin import train_steps
from maml_plugin.algorithms import maml


def register_nan_query_step(name: str, bad_steps: range) -> None:
  """Registers `name`: MAML whose query targets are NaN on the meta-steps
  (0-based) in `bad_steps`, for the trainer's non-finite guard."""

  @train_steps.TRAIN_STEPS.register(name, fields=maml.MAMLHParams)
  def make_train_step(hparams, *, loss_fn, tx):
    maml_step = train_steps.make_algorithm(
        'maml', loss_fn=loss_fn, tx=tx, **dataclasses.asdict(hparams))

    def train_step(state, batch, rng):
      bad = (state.step >= bad_steps.start) & (state.step < bad_steps.stop)
      query = dict(batch['query'],
                   y=jnp.where(bad, jnp.nan, batch['query']['y']))
      return maml_step.train_step(state, dict(batch, query=query), rng)

    return dataclasses.replace(maml_step, train_step=train_step)
