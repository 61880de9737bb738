"""Meta-SGD (Li et al. 2017) as a registered train step, ``'metasgd'``.

Usage::

  algorithm = make_algorithm('metasgd', loss_fn=loss_fn, tx=tx, inner_lr=0.01)
  state = MetaTrainState.create(algorithm.init_params(params), tx)

A learned inner rate for every parameter: the state's params are
``{'model': ..., 'inner_lr': ...}`` (`inner_lr` has the model's tree and
shapes, initialised to the config's `inner_lr`); both are meta-trained by
the outer optimizer, checkpointed, and used by evaluation
(``p - inner_lr * grad``, elementwise). The rates are not clipped: like the
paper, a rate may turn negative if that helps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from maml_plugin import core
from maml_plugin import fields
from maml_plugin.algorithms import base


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetaSGDHParams(base.HParams):
  """`base.HParams` (`inner_lr`: every rate's initial value) and:

  Attributes:
    remat_inner_steps: rematerialize each inner step (same gradient).
    rate_meta_lr: the outer step size of the rates (`base.rate_meta_lr_field`).
  """

  remat_inner_steps: bool = fields.flag(False, changes_training=False)
  rate_meta_lr: float | None = base.rate_meta_lr_field()


def metasgd_params(model_params, inner_lr: float) -> dict:
  """Meta-SGD's train-state params: the model and a rate for every entry."""
  return {'model': model_params,
          'inner_lr': jax.tree.map(lambda p: jnp.full_like(p, inner_lr),
                                   model_params)}


@base.TRAIN_STEPS.register('metasgd', fields=MetaSGDHParams)
def make_metasgd(hparams: MetaSGDHParams, *, loss_fn: core.LossFn,
                 tx: optax.GradientTransformation) -> base.MetaAlgorithm:
  """Meta-SGD (see module docstring)."""
  def objective(params, batch, model_state, rng):
    return core.maml_loss_and_aux(
        loss_fn, params['model'], batch, inner_lr=params['inner_lr'],
        num_steps=hparams.num_inner_steps, remat=hparams.remat_inner_steps,
        model_state=model_state, rng=rng)

  def inner_loop_for(loss):
    return core.InnerLoop(
        init=lambda params: params['model'],
        step=lambda params, p, support, k: core.sgd_step(
            loss, p, support, inner_lr=params['inner_lr']),
        params=lambda p: p)

  return base.MetaAlgorithm(
      train_step=base.gradient_train_step(objective, tx,
                                          hparams.task_batch_size,
                                          core.is_stateful(loss_fn)),
      inner_loop_for=inner_loop_for,
      init_params=functools.partial(metasgd_params, inner_lr=hparams.inner_lr),
      loss_fn=loss_fn)
